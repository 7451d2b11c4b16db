"""End-to-end checks of an armature gateway with the official `openai` client.

Usage: python openai_e2e.py BASE_URL MODEL
Each check asserts values; the last line printed is a summary the Rust test reads.
"""

import json
import re
import sys
from typing import List, Literal
import urllib.error
import urllib.request

import jsonschema
import openai
import pydantic
from e2e_checks import check, summary

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def assert_usage(usage, completion_tokens=None):
    assert usage is not None, "usage missing"
    assert usage.prompt_tokens > 0, usage
    assert usage.completion_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if completion_tokens is not None:
        assert usage.completion_tokens == completion_tokens, (usage, completion_tokens)


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Describe a harbor at dawn."},
]
PARAMS = dict(model=model, messages=MESSAGES, max_tokens=24, temperature=0.8, top_p=0.95, seed=1234)
state = {}


@check("models")
def _():
    ids = [m.id for m in client.models.list().data]
    assert ids == [model], ids


@check("chat")
def _():
    r = client.chat.completions.create(**PARAMS)
    assert r.object == "chat.completion"
    assert r.model == model
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str) and len(c.message.content) > 0, c
    assert c.finish_reason in ("stop", "length"), c.finish_reason
    assert_usage(r.usage)
    state["chat"] = r


@check("chat-stream-matches")
def _():
    r = state["chat"]
    stream = client.chat.completions.create(**PARAMS, stream=True, stream_options={"include_usage": True})
    text, finish, usage, chunks, roles = "", None, None, 0, []
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            assert chunk.choices == [], chunk
            usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        text += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"], roles
    assert chunks >= 3, chunks
    assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
    assert finish == r.choices[0].finish_reason, (finish, r.choices[0].finish_reason)
    assert_usage(usage, r.usage.completion_tokens)
    assert usage.prompt_tokens == r.usage.prompt_tokens


@check("stream-without-usage")
def _():
    stream = client.chat.completions.create(**PARAMS, stream=True)
    usages = [c.usage for c in stream]
    assert all(u is None for u in usages), usages


@check("completion")
def _():
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert r.object == "text_completion"
    c = r.choices[0]
    assert len(c.text) > 0 and c.finish_reason in ("stop", "length"), c
    assert_usage(r.usage)
    assert 0 < r.usage.prompt_tokens <= len("Once upon a time".encode())
    # Greedy is deterministic, streamed or not.
    s = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in s if ch.choices) == c.text
    state["completion"] = c.text


@check("stop-sequence")
def _():
    full = state["completion"]
    words = full.split(" ")
    assert len(words) >= 3, full
    stop = words[1] + " "
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[: full.index(stop)], (r.choices[0].text, full, stop)
    assert r.choices[0].finish_reason == "stop"


@check("max-completion-tokens")
def _():
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length", r


@check("models-retrieve")
def _():
    m = client.models.retrieve(model)
    assert m.id == model and m.object == "model", m
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("an unknown model was retrieved")


REPEAT = dict(model=model, prompt="I like apples. I like apples. I like apples. I like", max_tokens=24, temperature=0)


@check("penalties")
def _():
    plain = client.completions.create(**REPEAT).choices[0].text
    assert plain.count("apple") >= 3, plain  # greedy keeps repeating: the case the penalties are for
    for name, value in [("frequency_penalty", 2.0), ("presence_penalty", 2.0)]:
        text = client.completions.create(**REPEAT, **{name: value}).choices[0].text
        assert text != plain and text.count("apple") < plain.count("apple"), (name, plain, text)
    text = client.completions.create(**REPEAT, extra_body={"repetition_penalty": 1.8}).choices[0].text
    assert text != plain and text.count("apple") < plain.count("apple"), ("repetition_penalty", plain, text)
    # A negative frequency penalty favours what was said: no fewer repeats than greedy.
    text = client.completions.create(**REPEAT, frequency_penalty=-2.0).choices[0].text
    assert text.count("apple") >= plain.count("apple"), (plain, text)
    try:
        client.completions.create(**REPEAT, presence_penalty="1.5")
    except openai.BadRequestError as e:
        assert e.body["param"] == "presence_penalty", e.body
    else:
        raise AssertionError("a string penalty was accepted")


@check("logprobs")
def _():
    greedy = dict(model=model, messages=MESSAGES, max_tokens=8, temperature=0)
    r = client.chat.completions.create(**greedy, logprobs=True, top_logprobs=3)
    c = r.choices[0]
    content = c.logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    assert b"".join(bytes(t.bytes) for t in content).decode() == c.message.content, content
    for t in content:
        assert len(t.top_logprobs) == 3, t
        # Greedy: the chosen token is the most likely, with the same log probability.
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob, t
        assert t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    # Streamed, the same tokens and values arrive chunk by chunk.
    streamed = []
    for chunk in client.chat.completions.create(**greedy, logprobs=True, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    # Completions: tokens, token_logprobs, top_logprobs and text_offset line up with the text.
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == 0 and all(len(top) <= 2 for top in lp.top_logprobs), lp
    assert all(max(top.values()) == v for top, v in zip(lp.top_logprobs, lp.token_logprobs)), lp
    # Not asked for, none come.
    assert client.chat.completions.create(**greedy).choices[0].logprobs is None


def close(a, b, tolerance=1e-4):
    return len(a) == len(b) and all((x is None and y is None) or abs(x - y) <= tolerance for x, y in zip(a, b))


@check("echo")
def _():
    prompt = "The capital of France is"
    # Scored with nothing generated: each prompt token given those before it, the first null.
    r = client.completions.create(model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    c, n = r.choices[0], r.usage.prompt_tokens
    lp = c.logprobs
    assert (c.text, c.finish_reason, r.usage.completion_tokens) == (prompt, "length", 0), r
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n > 2, lp
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert "".join(lp.tokens) == prompt, lp.tokens
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n)], lp.text_offset
    for top, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:]):
        assert v <= 0 and len(top) == 2 and max(top.values()) >= v, (top, v)
    # With a completion: the prompt's scores, then the completion's, as it would be alone.
    greedy = dict(model=model, prompt=prompt, max_tokens=4, temperature=0, logprobs=2)
    alone = client.completions.create(**greedy).choices[0]
    g = client.completions.create(**greedy, echo=True).choices[0]
    assert g.text == prompt + alone.text, (g.text, alone.text)
    assert close(g.logprobs.token_logprobs[:n], lp.token_logprobs), (g.logprobs.token_logprobs, lp.token_logprobs)
    assert close(g.logprobs.token_logprobs[n:], alone.logprobs.token_logprobs)
    assert g.logprobs.text_offset[n] == len(prompt), g.logprobs.text_offset
    # Streamed: the first chunk echoes the prompt with its scores.
    chunks = [ch.choices[0] for ch in client.completions.create(**greedy, echo=True, stream=True) if ch.choices]
    assert chunks[0].text == prompt and chunks[0].logprobs.token_logprobs[0] is None, chunks[0]
    assert "".join(ch.text for ch in chunks) == g.text
    streamed = [v for ch in chunks if ch.logprobs for v in ch.logprobs.token_logprobs]
    assert close(streamed, g.logprobs.token_logprobs), streamed
    # Without log probabilities, the text only; with several choices, each echoes the prompt.
    e = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, echo=True).choices[0]
    assert e.text == g.text and e.logprobs is None, e
    two = client.completions.create(**dict(greedy, temperature=1.0), seed=3, n=2, echo=True)
    for ch in two.choices:
        assert ch.text.startswith(prompt) and close(ch.logprobs.token_logprobs[:n], lp.token_logprobs), ch


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=24)
    zip_code: int


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    age: int
    role: Literal["admin", "editor", "viewer"]
    hobbies: List[str] = pydantic.Field(max_length=3)
    address: Address


@check("structured-outputs")
def _():
    ask = [{"role": "user", "content": "Describe a fictional person as JSON."}]
    for temperature in (0, 1):
        r = client.beta.chat.completions.parse(
            model=model, messages=ask, response_format=Person, temperature=temperature, seed=11, max_tokens=300
        )
        person = r.choices[0].message.parsed
        assert isinstance(person, Person) and isinstance(person.address, Address), r
        assert r.choices[0].finish_reason == "stop", r.choices[0]
        assert person.role in ("admin", "editor", "viewer") and len(person.hobbies) <= 3, person
        with client.beta.chat.completions.stream(
            model=model, messages=ask, response_format=Person, temperature=temperature, seed=11, max_tokens=300
        ) as stream:
            streamed = stream.get_final_completion().choices[0].message.parsed
        assert streamed == person, (streamed, person)
    # Any JSON object, and vLLM's regex and choice, on 20 seeded samples each.
    o = client.chat.completions.create(model=model, messages=ask, response_format={"type": "json_object"}, max_tokens=200, temperature=0)
    assert isinstance(json.loads(o.choices[0].message.content), dict), o
    regex, choices = r"[A-Z][a-z]{2,6} [0-9]{2}", ["red", "green", "blue"]
    seen = set()
    for seed in range(20):
        common = dict(model=model, messages=ask, temperature=1.0, seed=seed, max_tokens=20)
        text = client.chat.completions.create(**common, extra_body={"structured_outputs": {"regex": regex}}).choices[0].message.content
        assert re.fullmatch(regex, text), text
        pick = client.chat.completions.create(**common, extra_body={"structured_outputs": {"choice": choices}}).choices[0].message.content
        assert pick in choices, pick
        seen.add(pick)
    assert len(seen) >= 2, seen
    # A schema that cannot compile is a 400 naming the field, before anything runs.
    try:
        client.chat.completions.create(
            model=model, messages=ask, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}}},
        )
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format.json_schema.schema", e.body
    else:
        raise AssertionError("an uncompilable schema was accepted")


def function(name, description, properties, required):
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


TOOL_SETS = [
    (
        "What is the weather in Paris right now?",
        [function("get_weather", "Current weather in a city", {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city", "unit"])],
    ),
    (
        "What is 12 plus 30, and 6 times 7?",
        [
            function("add", "Add two integers", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"]),
            function("multiply", "Multiply two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"]),
        ],
    ),
    (
        "Find recent news about volcanoes and email a summary to ana@example.com.",
        [
            function("search_web", "Search the web", {"query": {"type": "string", "maxLength": 60}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}, ["query", "max_results"]),
            function("send_email", "Send an email", {"to": {"type": "string", "maxLength": 40}, "subject": {"type": "string", "maxLength": 40}, "urgent": {"type": "boolean"}}, ["to", "subject", "urgent"]),
        ],
    ),
]


def valid_calls(calls, tools):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert calls, "no calls"
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_"), c
        jsonschema.validate(json.loads(c.function.arguments), schemas[c.function.name])
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def streamed_calls(**kwargs):
    calls, content, finish = {}, "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    assert c["id"] is None and d.function.name, "id and name come first, once"
                    c["id"], c["name"] = d.id, d.function.name
                c["arguments"] += d.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


@check("tools")
def _():
    for ask, tools in TOOL_SETS:
        messages = [{"role": "user", "content": ask}]
        common = dict(model=model, messages=messages, tools=tools, max_tokens=120, temperature=0)
        r = client.chat.completions.create(**common, tool_choice="required")
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        calls = valid_calls(c.message.tool_calls, tools)
        # Streamed, the deltas reassemble to the same calls.
        content, parts, finish = streamed_calls(**common, tool_choice="required")
        assert finish == "tool_calls" and content == "", (finish, content)
        assert [(p["name"], json.loads(p["arguments"])) for p in parts] == calls, (parts, calls)
        # A named function, sampled, one call.
        name = tools[-1]["function"]["name"]
        for seed in range(3):
            r = client.chat.completions.create(
                **dict(common, temperature=1.0), seed=seed, parallel_tool_calls=False,
                tool_choice={"type": "function", "function": {"name": name}},
            )
            named = valid_calls(r.choices[0].message.tool_calls, tools)
            assert [n for n, _ in named] == [name], named
        # Auto: content, or valid calls.
        m = client.chat.completions.create(**common).choices[0]
        if m.message.tool_calls:
            assert m.finish_reason == "tool_calls"
            valid_calls(m.message.tool_calls, tools)
        else:
            assert isinstance(m.message.content, str) and m.finish_reason in ("stop", "length"), m
    # Two turns: the call, its result, and an answer that uses it.
    ask, tools = TOOL_SETS[0]
    first = client.chat.completions.create(model=model, messages=[{"role": "user", "content": ask}], tools=tools, tool_choice="required", max_tokens=120, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    answer = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="none", max_tokens=40, temperature=0)
    a = answer.choices[0]
    assert a.finish_reason in ("stop", "length") and a.message.content and not a.message.tool_calls, a
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens - 150, "the history is in the prompt"
    # A malformed tool is refused by its path.
    try:
        client.chat.completions.create(model=model, messages=messages[:1], tools=[{"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {"a": {"type": "no-such"}}}}}])
    except openai.BadRequestError as e:
        assert e.body["param"] == "tools[0].function.parameters", e.body
    else:
        raise AssertionError("a bad parameters schema was accepted")


def prefix_cache_tokens():
    text = urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=30).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("armature_prefix_cache_tokens_total"))


# A prompt of several KV blocks (16 tokens each), new to the pool.
LONG = [{"role": "user", "content": "Write four different one-line openings for a story set in a lighthouse on a stormy night, each with a different narrator."}]


@check("n-choices")
def _():
    before = prefix_cache_tokens()
    r = client.chat.completions.create(model=model, messages=LONG, max_tokens=12, temperature=1.0, seed=7, n=4)
    assert [c.index for c in r.choices] == [0, 1, 2, 3], r.choices
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) >= 3, texts  # seeds 7, 8, 9, 10
    single = client.chat.completions.create(model=model, messages=LONG, max_tokens=12, temperature=1.0, seed=7)
    assert single.choices[0].message.content == texts[0], "choice 0 samples with the request's seed"
    assert r.usage.prompt_tokens == single.usage.prompt_tokens, "the prompt is counted once"
    assert 12 < r.usage.completion_tokens <= 4 * 12, r.usage  # every choice's tokens
    # Choices 1..3 found choice 0's prompt blocks in the pool (the prompt was computed once).
    assert prefix_cache_tokens() - before >= 3 * 16 * (r.usage.prompt_tokens // 16 - 1), (before, prefix_cache_tokens())
    # Streamed: every choice's chunks carry its index, and each reassembles.
    parts = {}
    for chunk in client.chat.completions.create(model=model, messages=LONG, max_tokens=12, temperature=1.0, seed=7, n=4, stream=True):
        for c in chunk.choices:
            parts.setdefault(c.index, []).append(c.delta.content or "")
    assert sorted(parts) == [0, 1, 2, 3], parts
    assert ["".join(parts[i]) for i in range(4)] == texts, (parts, texts)
    try:
        client.chat.completions.create(**PARAMS, n=17)
    except openai.BadRequestError as e:
        assert e.body["param"] == "n", e.body
    else:
        raise AssertionError("n=17 was accepted")


@check("responses")
def _():
    base = dict(model=model, instructions="You are terse.", input="Describe a harbor at dawn.", max_output_tokens=10, temperature=0)
    r = client.responses.create(**base)
    assert r.object == "response" and r.id.startswith("resp_"), r
    assert r.status in ("completed", "incomplete") and r.output_text, r
    assert r.output[0].type == "message" and r.output[0].content[0].type == "output_text", r.output
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 10, r.usage
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
    # The same request as a chat completion gives the same greedy text.
    chat = client.chat.completions.create(
        model=model, max_tokens=10, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe a harbor at dawn."}],
    )
    assert chat.choices[0].message.content == r.output_text, (chat.choices[0].message.content, r.output_text)
    # Streamed: the semantic events, whose deltas make the same text.
    kinds, deltas, final = [], [], None
    for ev in client.responses.create(**base, stream=True):
        kinds.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas.append(ev.delta)
        if ev.type in ("response.completed", "response.incomplete"):
            final = ev.response
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"], kinds
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"], kinds
    assert "".join(deltas) == r.output_text and final.output_text == r.output_text, (deltas, r.output_text)
    # Nothing is stored: asking to is refused by name.
    try:
        client.responses.create(**base, store=True)
    except openai.BadRequestError as e:
        assert e.body["param"] == "store", e.body
    else:
        raise AssertionError("store=True was accepted")


@check("responses-tools-and-formats")
def _():
    ask, tools = TOOL_SETS[0]
    flat = [{"type": "function", **t["function"]} for t in tools]
    common = dict(model=model, input=ask, tools=flat, max_output_tokens=120, temperature=0)
    r = client.responses.create(**common, tool_choice="required")
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed", r.output
    for c in calls:
        jsonschema.validate(json.loads(c.arguments), tools[0]["function"]["parameters"])
        assert c.call_id.startswith("call_") and c.name == "get_weather", c
    # Streamed: the call's item and its arguments as events.
    done = []
    for ev in client.responses.create(**common, tool_choice="required", stream=True):
        if ev.type == "response.function_call_arguments.done":
            done.append(json.loads(ev.arguments))
        if ev.type == "response.completed":
            final = ev.response
    assert done == [json.loads(c.arguments) for c in calls], done
    assert [o.type for o in final.output if o.type == "function_call"] == ["function_call"] * len(calls)
    # The call's output goes back as an input item, and the model answers.
    turns = [{"role": "user", "content": ask}] + [
        {"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls
    ] + [{"type": "function_call_output", "call_id": calls[0].call_id, "output": "18 C and sunny"}]
    a = client.responses.create(**dict(common, input=turns), tool_choice="none")
    assert a.output_text and not [o for o in a.output if o.type == "function_call"], a.output
    # text.format with a schema, and with a pydantic model through responses.parse.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "rain": {"type": "boolean"}},
              "required": ["city", "rain"], "additionalProperties": False}
    f = client.responses.create(model=model, input="Give a city and whether it rains there, as JSON.", max_output_tokens=60,
                                temperature=0, text={"format": {"type": "json_schema", "name": "w", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(f.output_text), schema)
    p = client.responses.parse(model=model, input="Describe a fictional person.", text_format=Person, max_output_tokens=300, temperature=0)
    assert isinstance(p.output_parsed, Person), p.output_parsed


@check("unknown-model")
def _():
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    else:
        raise AssertionError("unknown model was accepted")


@check("malformed-json")
def _():
    req = urllib.request.Request(base_url + "/chat/completions", data=b'{"model": "x", "messages": [', headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30)
    except urllib.error.HTTPError as e:
        assert e.code == 400, e.code
        body = json.loads(e.read())
        assert body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["message"].startswith("Malformed JSON body"), body
    else:
        raise AssertionError("malformed JSON was accepted")


@check("request-id")
def _():
    raw = client.chat.completions.with_raw_response.create(**PARAMS, extra_headers={"x-request-id": "e2e-42"})
    assert raw.headers["x-request-id"] == "e2e-42", dict(raw.headers)
    assert raw.parse().choices[0].message.content == state["chat"].choices[0].message.content


summary()
