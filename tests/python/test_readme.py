"""The client examples of the README and the user docs (docs/structured-outputs.md), run as written
against a real server, so they stay true.

Each fenced block after a `<!-- readme-example: sh|python -->` marker is run with the README's base URL
(http://localhost:8080) pointed at a test server serving the README's models (the default chat model
and the embedding model). A block passes when it exits 0 and prints something; the curl example must
print an OpenAI chat completion."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFAULT_MODELS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "structured-outputs.md"]
BLOCK = re.compile(r"<!-- readme-example: (sh|python) -->\s*```\w*\n(.*?)```", re.S)
README_URL = "http://localhost:8080"


def examples() -> list[tuple[str, str]]:
    return [ex for doc in DOCS for ex in BLOCK.findall(doc.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def readme_server(default_server):
    text = "".join(doc.read_text(encoding="utf-8") for doc in DOCS)
    models = set(re.findall(r'model[=:]\s*"([^"]+)"', text))
    missing = models - set(DEFAULT_MODELS)
    assert not missing, f"the docs use models the shared server does not load: {missing}"
    return default_server


def test_readme_has_examples():
    kinds = [k for k, _ in examples()]
    assert "sh" in kinds and kinds.count("python") >= 2, kinds


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(readme_server, index):
    kind, code = examples()[index]
    code = code.replace(README_URL, readme_server.url)
    cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "sh" else [sys.executable, "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"example {index} ({kind}) failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip(), f"example {index} printed nothing"
    if kind == "sh":
        reply = json.loads(r.stdout)
        assert reply["object"] == "chat.completion", reply
        message = reply["choices"][0]["message"]
        assert (message["content"] or "").strip() or message.get("tool_calls"), reply
