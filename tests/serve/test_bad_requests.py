"""Each bad request gets OpenAI's error JSON with a 4xx naming the field; the server answers the next one."""

import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY

USER = [{"role": "user", "content": "hi"}]
IMAGE = [{"type": "image_url", "image_url": {"url": "x"}}]


def works(client):
    reply = client.chat.completions.create(model="tiny-chat", messages=USER, max_tokens=2, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("kwargs, error, status, param", [
    (dict(model="gpt-4", messages=USER), openai.NotFoundError, 404, "model"),
    (dict(model="tiny-chat", messages=[]), openai.BadRequestError, 400, "messages"),
    (dict(model="tiny-chat", messages=[{"role": "assistant", "content": "hello"}, *USER]), openai.BadRequestError,
     400, "messages[0].role"),
    (dict(model="tiny-chat", messages=[*USER, *USER]), openai.BadRequestError, 400, "messages[1].role"),
    (dict(model="tiny-chat", messages=[*USER, {"role": "assistant", "content": "x"}]), openai.BadRequestError, 400,
     "messages[1].role"),
    (dict(model="tiny-chat", messages=[{"role": "user", "content": 123}]), openai.BadRequestError, 400,
     "messages[0].content"),
    (dict(model="tiny-chat", messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, 400,
     "messages[0].role"),
    (dict(model="tiny-chat", messages=USER, max_tokens=100_000), openai.BadRequestError, 400, "max_tokens"),
    (dict(model="tiny-chat", messages=USER, max_tokens=0), openai.BadRequestError, 400, "max_tokens"),
    (dict(model="tiny-chat", messages=USER, temperature=-0.5), openai.BadRequestError, 400, "temperature"),
    (dict(model="tiny-chat", messages=USER, top_p=0), openai.BadRequestError, 400, "top_p"),
    (dict(model="tiny-chat", messages=USER, n=17), openai.BadRequestError, 400, "n"),
    (dict(model="tiny-chat", messages=USER, seed=2 ** 70), openai.BadRequestError, 400, "seed"),
    (dict(model="tiny-chat", messages=[{"role": "user", "content": IMAGE}]),
     openai.BadRequestError, 400, "messages[0].content"),
    (dict(model="tiny-chat", messages=[{"role": "user", "content": "字" * 5000}]), openai.BadRequestError, 400,
     "messages"),
])
def test_bad_chat_request(client, kwargs, error, status, param):
    for stream in (False, True):
        with pytest.raises(error) as e:
            client.chat.completions.create(**kwargs, stream=stream)
        assert e.value.status_code == status
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"
        assert e.value.body["message"]
        works(client)


def post(live, raw: bytes, path="/v1/chat/completions", key=API_KEY):
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(f"{live.url}{path}", content=raw, headers=headers, timeout=30)


@pytest.mark.parametrize("raw, status, code", [
    (b'{"messages": [', 400, "invalid_json"),
    (b"\xff\xfe", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "' + b"a" * 70_000 + b'"}]}', 413, "request_too_large"),
])
def test_bad_bodies(live, client, raw, status, code):
    r = post(live, raw)
    assert r.status_code == status and r.json()["error"]["code"] == code and "Traceback" not in r.text
    works(client)


def test_api_key_is_required(live, client):
    for key in (None, "wrong"):
        r = post(live, b'{"messages": [{"role": "user", "content": "hi"}]}', key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{live.url}/v1/models").status_code == 401
    works(client)


def test_completions_bad_prompt_and_unknown_route(live, client):
    for body, param in ((b'{"prompt": 5}', "prompt"), (b'{"prompt": [999999]}', "prompt"),
                        (b'{"prompt": "a", "suffix": "b"}', "suffix")):
        r = post(live, body, path="/v1/completions")
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = post(live, b"{}", path="/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(f"{live.url}/v1/chat/completions").status_code == 405
    works(client)


NESTED = b'{"messages": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # far deeper than Python's recursion limit


@pytest.mark.parametrize("raw, path, status, param", [
    # a lone UTF-16 surrogate is valid JSON but no text: the tokenizer cannot take it
    (rb'{"messages": [{"role": "user", "content": "a\ud800b"}]}', "/v1/chat/completions", 400, "messages[0].content"),
    (rb'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}', "/v1/chat/completions",
     400, "messages[0].content"),
    (rb'{"prompt": "a\ud800b"}', "/v1/completions", 400, "prompt"),
    (rb'{"prompt": ["\ud800"]}', "/v1/completions", 400, "prompt"),
    (rb'{"prompt": "a", "max_tokens": 2, "stop": ["\ud800"]}', "/v1/completions", 400, "stop"),
    (rb'{"model": "\ud800", "prompt": "a"}', "/v1/completions", 404, "model"),
    (NESTED, "/v1/chat/completions", 400, None),
    (NESTED, "/v1/completions", 400, None),
])
def test_bad_text_and_nesting(live, client, raw, path, status, param):
    for stream in (b"false", b"true"):
        r = post(live, raw[:-1] + b', "stream": ' + stream + b"}", path=path)
        error = r.json()["error"]
        assert r.status_code == status and error["param"] == param, r.text
        assert "Traceback" not in r.text and "TextEncodeInput" not in r.text and "internal" not in r.text
    works(client)


def test_tiny_top_p_keeps_the_top_token(client):
    """top_p 1e-300 is 0 in float32: without care every token was cut and sampling failed (500)."""
    greedy = client.chat.completions.create(model="tiny-chat", messages=USER, max_tokens=4, temperature=0)
    for top_p in (1e-300, 5e-324):
        reply = client.chat.completions.create(model="tiny-chat", messages=USER, max_tokens=4, top_p=top_p, seed=3)
        assert reply.choices[0].message.content == greedy.choices[0].message.content  # only the top token is left
    assert client.completions.create(model="tiny-chat", prompt="a", max_tokens=3, top_p=1e-300).choices[0].text
