"""No silent field: every request field of the installed openai package is honoured or refused (400 naming it)."""

import typing
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from colossal_hammer.serve import fields
from tests.serve.conftest import API_KEY

SCHEMAS = {"/v1/chat/completions": chat_create_params.CompletionCreateParamsStreaming,
           "/v1/completions": completion_create_params.CompletionCreateParamsStreaming}
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path", sorted(SCHEMAS))
def test_every_field_of_the_openai_schema_is_in_the_table(path):
    schema = set(typing.get_type_hints(SCHEMAS[path]))
    assert len(schema) > 10  # the walk found the TypedDict's fields
    table = fields.ENDPOINTS[path]
    missing = sorted(schema - set(table))
    assert not missing, f"{path}: fields neither honoured nor refused: {missing}"
    assert all(f.kind in (fields.HONOURED, fields.REFUSED) for f in table.values())


def post(live, path, body):
    return httpx.post(f"{live.url}{path}", json=body, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)


# a value that asks for something, per refused field (null and the defaults pass)
ASKING = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto",
          "parallel_tool_calls": True, "functions": [{"name": "f"}], "function_call": "auto",
          "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
          "prediction": {"type": "content", "content": "x"}, "reasoning_effort": "low", "verbosity": "low",
          "web_search_options": {}, "store": True, "metadata": {"a": "b"}, "service_tier": "flex",
          "moderation": True, "prompt_cache_options": {}, "prompt_cache_retention": "24h",
          "best_of": 2, "suffix": "end"}


@pytest.mark.parametrize("path, name", [(p, n) for p, table in sorted(fields.ENDPOINTS.items())
                                        for n, _ in fields.refused(table)])
def test_each_refused_field_is_a_400_naming_it(live, path, name):
    assert name in ASKING, f"give {name} a value that asks for something"
    base = {"messages": USER} if "chat" in path else {"prompt": "a"}
    r = post(live, path, {**base, "max_tokens": 1, name: ASKING[name]})
    assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text
    for allowed in fields.ENDPOINTS[path][name].allowed:  # the values that ask for nothing are served
        assert post(live, path, {**base, "max_tokens": 1, name: allowed}).status_code == 200, (name, allowed)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "logprobs": False}, "logprobs"),  # completions' logprobs is a number: false is no number
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": USER, "logit_bias": {"5": 101}}, "logit_bias"),
    ({"messages": USER, "logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"messages": USER, "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"messages": USER, "frequency_penalty": 3}, "frequency_penalty"),
    ({"messages": USER, "presence_penalty": -2.5}, "presence_penalty"),
    ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": USER, "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format"),
    ({"messages": [*USER, {"role": "assistant", "content": "x"}, {"role": "tool", "content": "42",
                                                                 "tool_call_id": "1"}]}, "messages[2].role"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, *USER]},
     "messages[1].tool_calls"),
])
def test_bad_sampling_fields_are_400_naming_them(live, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = post(live, path, body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_readme_lists_the_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert fields.markdown() in readme, "README's field table differs from fields.markdown(); paste it in"
