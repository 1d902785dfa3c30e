"""The server behind LangChain's OpenAI integration: ChatOpenAI (invoke and stream) and OpenAIEmbeddings."""

from __future__ import annotations

import math

from langchain_openai import ChatOpenAI, OpenAIEmbeddings

import suite

QUESTION = "What is the capital of France? Answer in one word."


def llm(v1: str, **kw) -> ChatOpenAI:
    args = dict(
        base_url=v1,
        api_key="unused",
        model=suite.CHAT_MODEL,
        temperature=0,
        max_tokens=12,
        max_retries=0,
        timeout=120,
    )
    args.update(kw)
    return ChatOpenAI(**args)


def test_chat_invoke(v1, chat_model):
    msg = llm(v1).invoke(QUESTION)
    assert isinstance(msg.content, str) and msg.content
    assert "Paris" in msg.content, msg.content
    usage = msg.usage_metadata
    assert usage and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_chat_stream_matches_invoke(v1, chat_model):
    model = llm(v1)
    full = model.invoke(QUESTION).content
    parts = [chunk.content for chunk in model.stream(QUESTION)]
    assert len(parts) > 1, "streamed in pieces"
    assert "".join(parts) == full


def test_chat_with_system_message(v1, chat_model):
    msg = llm(v1, max_tokens=8).invoke(
        [("system", "You are a helpful assistant."), ("human", "Say hello.")]
    )
    assert isinstance(msg.content, str) and msg.content
    assert msg.response_metadata.get("finish_reason") in ("stop", "length")


def test_embed_documents(v1, embed_model):
    emb = OpenAIEmbeddings(
        base_url=v1,
        api_key="unused",
        model=embed_model,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    docs = emb.embed_documents(
        ["a cat sat on the mat", "a dog lay on the rug", "quarterly revenue"]
    )
    assert len(docs) == 3 and all(len(v) == 384 for v in docs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in docs)
    query = emb.embed_query("a cat sat on the mat")
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(query, docs[0]))
