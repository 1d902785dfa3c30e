#!/usr/bin/env python3
"""Extracts the response schemas the conformance tests validate against from OpenAI's published
OpenAPI spec (MIT licensed), with every schema they reference, into tests/fixtures/openai/schemas.json.

    python3 scripts/reference/extract_openai_schemas.py [SPEC] [OUT]

SPEC defaults to ../shared/openai-openapi.json next to the repository. The output is a small OpenAPI
document (info + components.schemas) that tests/python/schema.py loads, so a clone anywhere can run the
tests; deterministic (sorted keys)."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    # the Responses API (/v1/responses): the response object, its stream events, stored input items
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
]
PREFIX = "#/components/schemas/"


def refs(node, out):
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith(PREFIX):
            out.add(r[len(PREFIX):])
        for v in node.values():
            refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def main():
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "openai-openapi.json"
    out_path = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "tests/fixtures/openai/schemas.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    schemas = spec["components"]["schemas"]
    keep, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        found = set()
        refs(schemas[name], found)
        todo.extend(found - keep)
    doc = {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"] + " (response schemas used by inhaus's conformance tests)",
            "version": spec["info"]["version"],
            "license": spec["info"].get("license"),
        },
        "components": {"schemas": {k: schemas[k] for k in sorted(keep)}},
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{out_path}: {len(keep)} schemas from {spec_path} (version {spec['info']['version']})")


if __name__ == "__main__":
    main()
