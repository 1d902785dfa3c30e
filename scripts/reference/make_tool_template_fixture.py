#!/usr/bin/env python3
"""Renders Qwen 2.5's chat template with tools, tool calls and tool results the way transformers'
apply_chat_template does (jinja2 ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks,
`tojson` = json.dumps(ensure_ascii=False), `tools` passed as given), for tests/chat_template.rs.

    python3 scripts/reference/make_tool_template_fixture.py   # needs jinja2 (any transformers venv has it)

The template comes from the committed fixture tests/fixtures/<alias>/chat_template.json (copied there
from the GGUF by make_fixtures.py); the output is tests/fixtures/<alias>/chat_template_tools.json.
Deterministic."""
import json
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = Path(__file__).resolve().parents[2]
ALIAS = "qwen2.5-coder-0.5b-instruct"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city, e.g. \"Köln\" <or> \"Berlin\"",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}}
ASK = {"role": "user", "content": "Wie ist das Wetter in Köln?"}
CALL = {
    "role": "assistant",
    "content": "",
    "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Köln", "unit": "C"}}}],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "12 °C, Regen"}

CASES = [
    ([ASK], [WEATHER], True),
    ([{"role": "system", "content": "Antworte knapp."}, ASK], [WEATHER, CLOCK], True),
    ([ASK, CALL, RESULT], [WEATHER], True),
    ([ASK, CALL, RESULT, RESULT, {"role": "assistant", "content": "12 °C und Regen."}], [WEATHER], False),
]


def render(template, messages, tools, agp, special):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, tools=tools, documents=None, add_generation_prompt=agp, **special
    )


def main():
    src = json.loads((REPO / "tests/fixtures" / ALIAS / "chat_template.json").read_text(encoding="utf-8"))
    special = {"bos_token": src["bos_token"], "eos_token": src["eos_token"]}
    cases = [
        {"messages": m, "tools": t, "add_generation_prompt": agp, "rendered": render(src["chat_template"], m, t, agp, special)}
        for m, t, agp in CASES
    ]
    out = REPO / "tests/fixtures" / ALIAS / "chat_template_tools.json"
    doc = {
        "model": ALIAS,
        "note": "chat_template.json's template rendered like transformers' apply_chat_template with tools "
        f"(jinja2 {jinja2.__version__}, tojson = json.dumps(ensure_ascii=False))",
        "cases": cases,
    }
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
