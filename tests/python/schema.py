"""Validation of server responses against OpenAI's OpenAPI document.

The schemas are tests/fixtures/openai/schemas.json, extracted from OpenAI's spec by scripts/reference/extract_openai_schemas.py (override: $INHAUS_OPENAPI_SPEC, e.g. the whole ../shared/openai-openapi.json). OpenAPI 3.1 schemas are
JSON Schema 2020-12, so `jsonschema` validates them directly; the whole document is registered as one
resource and every `$ref` ("#/components/schemas/...") resolves inside it.

Two adjustments, both of parts of the document that are not 2020-12:
- Some schemas still carry OpenAPI 3.0's `nullable: true` (the streamed chat chunk's `finish_reason`,
  `logprobs` and `usage`), which 2020-12 ignores: such a schema is rewritten to
  `anyOf: [<schema>, {type: null}]`, as the document intends.
- The spec has no schema of a streamed legacy completion chunk: it says the chunk has the shape of
  CreateCompletionResponse, but that schema's `finish_reason` is not nullable while every chunk before the
  last has `finish_reason: null` (as OpenAI sends it). `CompletionStreamChunk` is that schema with a
  nullable `finish_reason`.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[2]
SPEC_URI = "urn:inhaus:openai-openapi"

# The schemas the suite validates against (all under #/components/schemas/), plus the derived
# CompletionStreamChunk.
NAMES = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
)


def spec_path() -> Path:
    """The committed extract of OpenAI's spec (scripts/reference/extract_openai_schemas.py makes it),
    or the whole spec named by INHAUS_OPENAPI_SPEC."""
    env = os.environ.get("INHAUS_OPENAPI_SPEC")
    return Path(env) if env else REPO / "tests" / "fixtures" / "openai" / "schemas.json"


def _nullable_to_anyof(node: Any) -> Any:
    """Rewrites OpenAPI 3.0 `nullable: true` into 2020-12 `anyOf [..., null]`, recursively."""
    if isinstance(node, list):
        return [_nullable_to_anyof(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_anyof(v) for k, v in node.items()}
    if out.get("nullable") is True:
        del out["nullable"]
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def spec() -> dict:
    path = spec_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"OpenAI OpenAPI spec not found at {path} (set INHAUS_OPENAPI_SPEC)"
        )
    with open(path, encoding="utf-8") as f:
        doc = _nullable_to_anyof(json.load(f))
    schemas = doc["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    fr = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [fr, {"type": "null"}]
    }
    schemas["CompletionStreamChunk"] = chunk
    return doc


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    doc = spec()
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"no schema {name!r} in {spec_path()}")
    registry = Registry().with_resource(
        SPEC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    root = {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(root, registry=registry)


def errors(name: str, value: Any) -> list[jsonschema.ValidationError]:
    return list(validator(name).iter_errors(value))


def assert_valid(name: str, value: Any) -> None:
    """Fails with the most relevant schema error (and where it is) when `value` is not a valid `name`."""
    errs = errors(name, value)
    if errs:
        e = best_match(errs)
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        shown = json.dumps(value)[:2000]
        raise AssertionError(
            f"not a valid {name}: at {where}: {e.message} ({len(errs)} error(s))\n{shown}"
        )


def _make(name: str):
    def check(value: Any) -> None:
        assert_valid(name, value)

    check.__name__ = f"validate_{name}"
    return check


validate_chat_completion = _make("CreateChatCompletionResponse")
validate_chat_chunk = _make("CreateChatCompletionStreamResponse")
validate_completion = _make("CreateCompletionResponse")
validate_completion_chunk = _make("CompletionStreamChunk")
validate_embedding_response = _make("CreateEmbeddingResponse")
validate_models_list = _make("ListModelsResponse")
validate_model = _make("Model")
validate_error = _make("ErrorResponse")
