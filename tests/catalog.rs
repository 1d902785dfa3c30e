//! The compiled-in catalog parses, its aliases are unique and resolve under $INHAUS_MODELS.
use inhaus::catalog;

#[test]
fn catalog_is_valid() {
    let e = catalog::entries();
    assert!(e.len() >= 5, "catalog parsed: {} entries", e.len());
    let mut aliases: Vec<&str> = e.iter().map(|x| x.alias.as_str()).collect();
    aliases.sort();
    aliases.dedup();
    assert_eq!(aliases.len(), e.len(), "aliases are unique");
    for x in e {
        assert_eq!(x.sha256.len(), 64, "{}", x.alias);
        assert!(!x.parts.is_empty(), "{}", x.alias);
        assert!(!x.license.is_empty() && !x.source.is_empty(), "{}", x.alias);
    }
    assert_eq!(catalog::default_chat_alias(), "qwen2.5-coder-0.5b-instruct");
}

#[test]
fn missing_file_names_the_fetch_command() {
    let dir = std::env::temp_dir().join(format!("inhaus-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // Only this test in this binary touches INHAUS_MODELS.
    std::env::set_var("INHAUS_MODELS", &dir);
    let err = catalog::resolve("gemma-3-270m").expect_err("not fetched");
    assert!(
        err.to_string()
            .contains("scripts/fetch-models.sh gemma-3-270m"),
        "{err}"
    );
    std::env::remove_var("INHAUS_MODELS");
}
