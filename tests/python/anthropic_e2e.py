"""End-to-end checks of an armature gateway's Messages API with the official `anthropic` client.

Usage: python anthropic_e2e.py BASE_URL MODEL
Each check asserts values; the last line printed is a summary the Rust test reads.
"""

import json
import sys

import anthropic
import jsonschema
from e2e_checks import check, summary

base_url, model = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


MESSAGES = [{"role": "user", "content": "Describe a harbor at dawn."}]
# Sampling fields are not in the 2.x SDK's signature (newer models fix them); they go as extra_body.
BASE = dict(model=model, max_tokens=12, system="You are terse.", messages=MESSAGES, extra_body={"temperature": 0})
state = {}


@check("create")
def _():
    m = client.messages.create(**BASE)
    assert m.type == "message" and m.role == "assistant" and m.model == model, m
    assert m.id.startswith("msg_"), m.id
    assert len(m.content) == 1 and m.content[0].type == "text" and m.content[0].text, m.content
    assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 12, m.usage
    state["m"] = m


@check("max-tokens")
def _():
    m = client.messages.create(**{**BASE, "max_tokens": 3})
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 3, m


@check("stream")
def _():
    with client.messages.stream(**BASE) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == state["m"].content[0].text, (text, state["m"].content[0].text)
    assert final.stop_reason == state["m"].stop_reason and final.usage.output_tokens == state["m"].usage.output_tokens
    kinds = [e.type for e in client.messages.create(**BASE, stream=True)]
    # (The SDK drops the `ping` event the server sends after content_block_start.)
    assert kinds[:2] == ["message_start", "content_block_start"], kinds
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"], kinds
    assert set(kinds[2:-3]) == {"content_block_delta"}, kinds


@check("stop-sequence")
def _():
    words = state["m"].content[0].text.split()
    assert len(words) >= 3, words
    stop = " " + words[2]
    m = client.messages.create(**BASE, stop_sequences=["never-said", stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop, (m.stop_reason, m.stop_sequence)
    assert stop not in m.content[0].text


@check("count-tokens")
def _():
    n = client.messages.count_tokens(model=model, system="You are terse.", messages=MESSAGES)
    assert n.input_tokens == state["m"].usage.input_tokens, (n, state["m"].usage)


@check("errors")
def _():
    try:
        client.messages.create(**{**BASE, "model": "no-such-model"})
    except anthropic.NotFoundError as e:
        assert e.body["type"] == "error" and e.body["error"]["type"] == "not_found_error", e.body
    else:
        raise AssertionError("unknown model accepted")
    try:
        client.messages.create(**{**BASE, "extra_body": {"temperature": 1.5}})
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error" and "temperature" in e.body["error"]["message"], e.body
    else:
        raise AssertionError("temperature 1.5 accepted")


WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}}, "required": ["zone"], "additionalProperties": False}}


@check("tools")
def _():
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    common = dict(model=model, max_tokens=80, messages=ask, tools=[WEATHER, TIME], extra_body={"temperature": 0})
    schemas = {t["name"]: t["input_schema"] for t in (WEATHER, TIME)}
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_time"}):
        m = client.messages.create(**common, tool_choice=choice)
        assert m.stop_reason == "tool_use", m
        uses = [b for b in m.content if b.type == "tool_use"]
        assert uses and all(u.id.startswith("toolu_") for u in uses), m.content
        for u in uses:
            jsonschema.validate(u.input, schemas[u.name])
        if choice["type"] == "tool":
            assert [u.name for u in uses] == ["get_time"], uses
        # Streamed: each call a block, its input as JSON deltas, the same calls.
        streamed, current = [], None
        with client.messages.stream(**common, tool_choice=choice) as stream:
            for ev in stream:
                if ev.type == "content_block_start" and ev.content_block.type == "tool_use":
                    current = {"name": ev.content_block.name, "json": ""}
                    streamed.append(current)
                elif ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                    current["json"] += ev.delta.partial_json
            final = stream.get_final_message()
        assert [(c["name"], json.loads(c["json"])) for c in streamed] == [(u.name, u.input) for u in uses], streamed
        assert final.stop_reason == "tool_use", final
    # The conversation goes on with the tool's result.
    m = client.messages.create(**common, tool_choice={"type": "any"})
    use = next(b for b in m.content if b.type == "tool_use")
    turns = ask + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "-3 C and snowing"}]},
    ]
    answer = client.messages.create(**{**common, "messages": turns}, tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text", answer
    plain = client.messages.count_tokens(model=model, messages=ask).input_tokens
    assert answer.usage.input_tokens >= plain + len("-3 C and snowing"), "the call and its result are in the prompt"
    try:
        client.messages.create(**common, tool_choice={"type": "tool", "name": "nope"})
    except anthropic.BadRequestError as e:
        assert e.body["error"]["type"] == "invalid_request_error", e.body
    else:
        raise AssertionError("an unknown tool was accepted")


summary()
