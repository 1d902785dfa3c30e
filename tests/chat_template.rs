//! Chat templates: the models' own templates render exactly as the reference (jinja2 configured as
//! transformers configures it) renders them; Gemma's built-in template gives Gemma's format.
mod common;
use common::*;
use inhaus::chat_template::{ChatMessage, ChatTemplate, GEMMA_TEMPLATE};

fn messages(v: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

fn check_fixture(alias: &str) {
    let m = model(alias);
    let t = m.chat_template.as_ref().expect("model has a chat template");
    let fx = fixture(alias, "chat_template.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 6);
    for (i, case) in cases.iter().enumerate() {
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().expect("flag");
        let got = t.render(&msgs, agp).expect("render");
        assert_eq!(
            got,
            case["rendered"].as_str().expect("rendered"),
            "{alias} case {i}"
        );
    }
}

#[test]
fn qwen_template_renders_like_transformers() {
    check_fixture("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn smollm2_template_renders_like_transformers() {
    check_fixture("smollm2-135m-instruct");
}

#[test]
fn gemma_builtin_template_folds_system_into_first_user_turn() {
    let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").expect("compile");
    let msgs = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi there "),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Capital of Germany?"),
    ];
    let got = t.render(&msgs, true).expect("render");
    assert_eq!(
        got,
        "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nCapital of Germany?<end_of_turn>\n<start_of_turn>model\n"
    );
    let no_prompt = t.render(&msgs[1..2], false).expect("render");
    assert_eq!(
        no_prompt,
        "<bos><start_of_turn>user\nHi there<end_of_turn>\n"
    );
}

#[test]
fn template_exceptions_become_errors() {
    let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").expect("compile");
    let msgs = vec![ChatMessage::new("assistant", "I speak first")];
    let err = t.render(&msgs, true).expect_err("roles must alternate");
    assert!(err.to_string().contains("alternate"), "{err}");
}

#[test]
fn gemma_chat_prompt_tokenizes_with_single_bos() {
    let m = model("gemma-3-270m");
    let t = m.chat_template.as_ref().expect("built-in template");
    let text = t
        .render(&[ChatMessage::new("user", "Hi")], true)
        .expect("render");
    let ids = m.tokenizer.encode(&text, false).expect("encode");
    assert_eq!(ids[0], 2, "starts with <bos>");
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1);
    let start_of_turn = m
        .tokenizer
        .encode("<start_of_turn>", false)
        .expect("encode");
    assert_eq!(start_of_turn.len(), 1, "<start_of_turn> is one token");
    assert_eq!(ids[1], start_of_turn[0]);
}

/// Tools, tool calls and tool results render as transformers renders them (tojson's separators,
/// no HTML escaping, key order), from scripts/reference/make_tool_template_fixture.py.
#[test]
fn qwen_template_with_tools_renders_like_transformers() {
    let alias = "qwen2.5-coder-0.5b-instruct";
    let m = model(alias);
    let t = m.chat_template.as_ref().expect("model has a chat template");
    let fx = fixture(alias, "chat_template_tools.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 4);
    for (i, case) in cases.iter().enumerate() {
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().expect("flag");
        let got = t
            .render_with_tools(&msgs, agp, Some(&case["tools"]))
            .expect("render");
        assert_eq!(
            got,
            case["rendered"].as_str().expect("rendered"),
            "{alias} tools case {i}"
        );
    }
}
