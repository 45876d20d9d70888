"""Every request field of /v1/chat/completions and /v1/completions: honoured, or refused with a 400 naming it.

The one place that says what the server does with a field. protocol.py refuses what this table
refuses (a refused field is accepted only with a value that asks for nothing: absent, null, or the
listed defaults); tests/serve/test_fields.py walks the installed `openai` package's request schema
and fails on a field missing here; the README's table is `markdown()` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

HONOURED, REFUSED = "honoured", "refused"


@dataclass(frozen=True)
class Field:
    kind: str  # HONOURED | REFUSED
    note: str
    allowed: Tuple = (None,)  # REFUSED: the values that ask for nothing, so pass


def _h(note: str) -> Field:
    return Field(HONOURED, note)


def _r(note: str, *allowed) -> Field:
    return Field(REFUSED, note, (None, *allowed))


IDENTIFIER = "an identifier for the caller's records; nothing in a reply depends on it"
NO_TOOLS = "no tool calling: the chat templates' tool formats and a tool-call parser are not built"

SHARED: Dict[str, Field] = {
    "model": _h("must be the served model's id (404 otherwise); optional"),
    "stream": _h("server-sent events, ending with [DONE]"),
    "stream_options": _h("include_usage: a last event with the usage counts"),
    "temperature": _h("0: greedy"),
    "top_p": _h("nucleus sampling, per row"),
    "max_tokens": _h("at most the context the prompt leaves"),
    "stop": _h("up to 16 strings, never shown in the reply"),
    "seed": _h("a seeded generator per choice (choice i uses seed + i)"),
    "n": _h("1..16 choices sampled from one prefill of the prompt"),
    "frequency_penalty": _h("minus penalty x count of the token in the reply so far, per row"),
    "presence_penalty": _h("minus penalty once the token is in the reply, per row"),
    "logit_bias": _h("token id -> bias in [-100, 100], added to the logits"),
    "user": _h(IDENTIFIER),
    # vLLM's extra sampling fields
    "top_k": _h("vLLM's: the k most likely tokens; -1 or 0: all"),
    "repetition_penalty": _h("vLLM's: logits of prompt and reply tokens divided (positive) or multiplied by it"),
    "stop_token_ids": _h("vLLM's: these token ids end the reply like EOS"),
    "min_tokens": _h("vLLM's: EOS and stop_token_ids are masked until this many tokens"),
}

CHAT: Dict[str, Field] = {
    **SHARED,
    "messages": _h("system/developer, user, assistant; through the model's chat template"),
    "max_completion_tokens": _h("as max_tokens; wins over it"),
    "logprobs": _h("choices[].logprobs.content: each token's logprob (after penalties and logit_bias, before "
                   "temperature)"),
    "top_logprobs": _h("0..20 most likely alternatives per token; needs logprobs true"),
    "response_format": _h("text; json_object or json_schema: every token masked to keep the reply valid JSON "
                          "(of the schema) by llguidance's grammar matcher"),
    "tools": _r(NO_TOOLS, []),
    "tool_choice": _r(NO_TOOLS, "none"),
    "parallel_tool_calls": _r(NO_TOOLS),
    "functions": _r(NO_TOOLS, []),
    "function_call": _r(NO_TOOLS, "none"),
    "audio": _r("text only: no audio output"),
    "modalities": _r("text only", ["text"]),
    "prediction": _r("no predicted-output decoding"),
    "reasoning_effort": _r("not a reasoning model"),
    "verbosity": _r("no verbosity control"),
    "web_search_options": _r("no web search"),
    "store": _r("nothing is stored", False),
    "metadata": _r("only with store, and nothing is stored"),
    "service_tier": _r("one tier", "auto", "default"),
    "moderation": _r("no moderation"),
    "prompt_cache_key": _h("a cache hint; this server keeps no prompt cache, so a reply never depends on it"),
    "prompt_cache_options": _r("no prompt cache to configure"),
    "prompt_cache_retention": _r("no prompt cache to keep"),
    "safety_identifier": _h(IDENTIFIER),
}

COMPLETIONS: Dict[str, Field] = {
    **SHARED,
    "prompt": _h("a string or a list of token ids, or a list of up to 64 of those (choice k * n + i: prompt k's "
                 "i-th), prefilled together"),
    "logprobs": _h("choices[].logprobs (tokens, token_logprobs, top_logprobs, text_offset) with this many "
                   "alternatives (0..20; 0: the chosen token's only)"),
    "echo": _h("the prompt before the reply, with its tokens' logprobs when logprobs is set (the first is null)"),
    "max_tokens": _h("at most the context the prompt leaves; 0 with echo: the prompt's logprobs alone"),
    "best_of": _r("only 1: no server-side ranking of choices", 1),
    "suffix": _r("no insertion (fill-in-the-middle)", ""),
}

ENDPOINTS = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS}


def refused(table: Dict[str, Field]):
    return [(name, f) for name, f in table.items() if f.kind == REFUSED]


def markdown() -> str:
    """The README's table, one row per field and endpoint."""
    lines = ["| field | /v1/chat/completions | /v1/completions |", "|---|---|---|"]
    names = list(dict.fromkeys([*CHAT, *COMPLETIONS]))
    for name in names:
        cells = []
        for table in (CHAT, COMPLETIONS):
            f = table.get(name)
            cells.append("—" if f is None else f"{f.kind}: {f.note}".replace("|", "\\|"))
        lines.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)
