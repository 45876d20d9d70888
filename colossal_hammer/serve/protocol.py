"""Request bodies → validated values, or a RequestError that becomes OpenAI's error JSON.

Every message names the field (`param`) so a client library shows the user what to change. Unknown
fields are ignored (as vLLM does); the fields OpenAI's API and vLLM's sampling define are each
honoured or refused as fields.py's table says, never silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

from .fields import Field, refused
from .grammar import JSON_OBJECT, compile_schema

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 16
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64


class RequestError(Exception):
    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Common:
    model: str
    stream: bool
    include_usage: bool
    temperature: float
    top_p: float
    top_k: int
    max_tokens: Optional[int]  # None: as many as the context leaves
    stop: List[str]
    seed: Optional[int]
    n: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: Dict[int, float]
    stop_token_ids: List[int]
    min_tokens: int


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # the parser recurses once per level: [[[[…]]]] a few thousand deep ends it
        raise RequestError("the body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", code="invalid_json")
    return body


def _shown(value) -> str:
    """A refused value, short, for an error message."""
    return json.dumps(value, ensure_ascii=False)[:50]


def _text(value: str, param: str) -> str:
    """`value` if it is Unicode text; JSON's \\ud800 escapes can carry lone surrogates no tokenizer can take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(f"'{param}' holds a lone UTF-16 surrogate ({value[e.start]!a} at character {e.start}), "
                           f"which is not text", param) from None
    return value


def _number(body: dict, name: str, default: float, low: float, high: float = math.inf,
            low_inclusive: bool = True) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be a number, got {_shown(value)}", name)
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        bound = f"{'at least' if low_inclusive else 'more than'} {low:g}" + (f" and at most {high:g}"
                                                                           if high != math.inf else "")
        raise RequestError(f"'{name}' must be {bound}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: Optional[int] = None) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be an integer, got {_shown(value)}", name)
    if value < low or (high is not None and value > high):
        within = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RequestError(f"'{name}' must be {within}, got {value}", name)
    return value


def boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {_shown(value)}", name)
    return value


def _asks_nothing(value, allowed) -> bool:
    # by type as well as value: 0 == False, so a 0 passed where only false asks for nothing (logprobs=0 did)
    return any(value is a or (type(value) is type(a) and value == a) for a in allowed)


def refuse(body: dict, table: Dict[str, Field]) -> None:
    """400 naming the first field the table refuses that asks for something."""
    for name, f in refused(table):
        value = body.get(name)
        if not _asks_nothing(value, f.allowed):
            raise RequestError(f"'{name}' is not supported by this server ({f.note}), got {_shown(value)}", name,
                               code="unsupported_parameter")


def _token_ids(body: dict, name: str) -> List[int]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise RequestError(f"'{name}' must be a list of token ids, got {_shown(value)}", name)
    return value


def _logit_bias(body: dict) -> Dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"'logit_bias' must be an object of token id -> bias, got {_shown(value)}", "logit_bias")
    out = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.strip().isdigit()):
            raise RequestError(f"'logit_bias' keys must be token ids, got {_shown(key)}", "logit_bias")
        out[int(key)] = _number({"logit_bias": bias}, "logit_bias", 0.0, -100.0, 100.0)
    return out


def common(body: dict, served_model: str, table: Dict[str, Field]) -> Common:
    model = body.get("model")
    model = served_model if model is None else model  # optional here: curl users need not look it up
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    if model != served_model:
        raise RequestError(f"The model '{model}' does not exist; this server serves '{served_model}' "
                           f"(GET /v1/models)", "model", "model_not_found", status=404)
    refuse(body, table)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", "stream_options")
    include_usage = boolean(options or {}, "include_usage")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise RequestError(f"'stop' holds {len(stops)} strings; at most {MAX_STOP}", "stop")
    for s in stops:
        _text(s, "stop")
    max_tokens = _integer(body, "max_completion_tokens", 1)
    # 0 with echo: the prompt's logprobs alone (lm-eval's loglikelihood requests)
    max_tokens = _integer(body, "max_tokens", 0 if body.get("echo") is True else 1) if max_tokens is None \
        else max_tokens
    top_k = _integer(body, "top_k", -1)
    min_tokens = _integer(body, "min_tokens", 0) or 0
    if max_tokens is not None and min_tokens > max_tokens:
        raise RequestError(f"'min_tokens' ({min_tokens}) is more than 'max_tokens' ({max_tokens})", "min_tokens")
    return Common(model=model, stream=boolean(body, "stream"), include_usage=include_usage,
                  temperature=_number(body, "temperature", 1.0, 0.0),
                  top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_inclusive=False),
                  top_k=0 if top_k in (None, -1) else top_k, max_tokens=max_tokens, stop=stops,
                  seed=_integer(body, "seed", -2 ** 63, 2 ** 63 - 1 - MAX_N), n=_integer(body, "n", 1, MAX_N) or 1,
                  presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
                  frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
                  repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, low_inclusive=False),
                  logit_bias=_logit_bias(body), stop_token_ids=_token_ids(body, "stop_token_ids"),
                  min_tokens=min_tokens)


def chat_logprobs(body: dict) -> Optional[int]:
    """How many alternatives per token (0..20) when logprobs is true, else None; top_logprobs needs logprobs."""
    wanted = boolean(body, "logprobs")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if wanted else None


def response_format(body: dict) -> Optional[str]:
    """The grammar a reply must follow (json_object: any JSON object; json_schema: its schema), or None for text."""
    value = body.get("response_format")
    if value is None or value == {"type": "text"}:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        schema = JSON_OBJECT
    elif kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError("'response_format.json_schema' must be an object with a 'schema' object",
                               "response_format")
    else:
        raise RequestError(f"'response_format' must be {{\"type\": \"text\"}}, {{\"type\": \"json_object\"}} or "
                           f"{{\"type\": \"json_schema\", \"json_schema\": {{...}}}}, got {_shown(value)}",
                           "response_format")
    try:
        return compile_schema(schema)
    except ValueError as e:
        raise RequestError(f"'response_format': the JSON schema does not compile: {str(e)[:300]}",
                           "response_format") from None


def completion_logprobs(body: dict) -> Optional[int]:
    """Completions' logprobs is a number of alternatives (0: the chosen token's logprob only), or absent."""
    return _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return _text(content, f"messages[{i}].content")
    # OpenAI's content parts: text parts are text; anything else (images, audio) this model cannot read
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return _text("".join(p["text"] for p in content), f"messages[{i}].content")
    raise RequestError(f"'messages[{i}].content' must be a string (or a list of text parts), got "
                       f"{_shown(content)}", f"messages[{i}].content")


def messages(body: dict) -> List[dict]:
    """Role-checked messages: system first if at all, then user and assistant taking turns, ending with user."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise RequestError(f"'messages[{i}]' must be an object with 'role' and 'content'", f"messages[{i}]")
        role = m.get("role")
        if role in ("tool", "function"):
            raise RequestError(f"'messages[{i}].role' is {role}: this server does no tool calling, so it takes no "
                               f"tool results (see 'tools')", f"messages[{i}].role", "unsupported_parameter")
        if m.get("tool_calls") or m.get("function_call"):
            name = "tool_calls" if m.get("tool_calls") else "function_call"
            raise RequestError(f"'messages[{i}].{name}': this server does no tool calling", f"messages[{i}].{name}",
                               "unsupported_parameter")
        if role not in ROLES:
            raise RequestError(f"'messages[{i}].role' must be one of {', '.join(ROLES)}, got "
                               f"{_shown(role)}", f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        index = i + len(out) - len(turns)
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise RequestError(f"'messages[{index}].role' is {m['role']}: after an optional first system message, "
                               f"user and assistant messages must take turns starting with user",
                               f"messages[{index}].role")
    if not turns or turns[-1]["role"] != "user":
        raise RequestError("the last message must be the user's (the reply comes after it)",
                           f"messages[{len(out) - 1}].role")
    return out


def prompts(body: dict) -> list:
    """Completion prompts: a string or a list of token ids, or a list of those (up to MAX_PROMPTS; lm-eval's
    API models send a batch this way)."""
    value = body.get("prompt")
    one = lambda v: isinstance(v, str) or (isinstance(v, list) and v and all(  # noqa: E731
        isinstance(t, int) and not isinstance(t, bool) for t in v))
    many = [value] if one(value) else value
    if not isinstance(many, list) or not many or not all(one(v) for v in many):
        raise RequestError("'prompt' must be a string or a list of token ids, or a list of those", "prompt")
    if len(many) > MAX_PROMPTS:
        raise RequestError(f"'prompt' holds {len(many)} prompts; at most {MAX_PROMPTS} per request", "prompt")
    return [_text(v, "prompt") if isinstance(v, str) else v for v in many]


def check_context(prompt_tokens: int, max_tokens: Optional[int], context: int, prompt_param: str) -> int:
    """The number of tokens to allow; RequestError when prompt + max_tokens do not fit the context."""
    if prompt_tokens >= context:
        raise RequestError(f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens and "
                           f"the reply needs at least one", prompt_param, "context_length_exceeded")
    room = context - prompt_tokens
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise RequestError(f"'max_tokens' is {max_tokens} but the prompt ({prompt_tokens} tokens) leaves {room} of "
                           f"this model's {context}-token context", "max_tokens", "context_length_exceeded")
    return max_tokens
