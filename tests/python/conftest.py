"""Fixtures of the client suite: one server for the whole session (the chat and embedding models), a
second one with an API key for the auth tests, and an official `openai` client for the first."""

from __future__ import annotations

import os

import openai
import pytest

import suite

# Loopback traffic never goes through a proxy, whatever the environment says.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

_started: list[suite.Server] = []


def _start(models, extra_args=None, name="server") -> suite.Server:
    srv = suite.Server(models, extra_args, name)
    _started.append(srv)
    try:
        return srv.start()
    except suite.ServerError as e:
        message = str(e)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def server():
    srv = _start(suite.MODELS)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_url(server) -> str:
    """http://ADDR of the session's server (the OpenAI API is under /v1)."""
    return server.url


@pytest.fixture(scope="session")
def v1(server) -> str:
    return server.v1


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    # No retries: a failing request fails its test at once instead of backing off.
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def chat_model() -> str:
    if suite.CHAT_MODEL not in suite.MODELS:
        pytest.skip(f"{suite.CHAT_MODEL} is not in INHAUS_TEST_MODELS")
    return suite.CHAT_MODEL


@pytest.fixture(scope="session")
def embed_model() -> str:
    if suite.EMBED_MODEL not in suite.MODELS:
        pytest.skip(f"{suite.EMBED_MODEL} is not in INHAUS_TEST_MODELS")
    return suite.EMBED_MODEL


# The models `inhaus serve` loads by default (and the README's examples use).
DEFAULT_MODELS = ["qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"]


@pytest.fixture(scope="session")
def default_server() -> suite.Server:
    """One server with the default models, shared by the tool-call, structured-output and README
    tests (loading a model once instead of once per module)."""
    srv = _start(DEFAULT_MODELS, name="default models")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def auth_server():
    """A server started with two API keys, `sk-test` and `sk-other` (the chat model only)."""
    keys = ["--api-key", suite.API_KEY, "--api-key", suite.OTHER_API_KEY]
    srv = _start([suite.CHAT_MODEL], keys, name="auth server")
    yield srv
    srv.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus == 0:
        return
    for srv in _started:
        if srv.lines:
            terminalreporter.section(f"{srv.name} log (last lines)")
            terminalreporter.write_line(srv.log_tail())


def pytest_sessionfinish(session, exitstatus):
    for srv in _started:
        srv.stop()
