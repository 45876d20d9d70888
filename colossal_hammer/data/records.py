"""Parse one jsonl line into the fields a preparation script needs, or say exactly what is wrong."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

from .manifest import MANIFEST

# Reasons a line is not a document; the manifest counts skipped lines under these names.
BLANK = "blank_line"  # always skipped and counted, never an error
INVALID_UTF8 = "invalid_utf8"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
NON_STRING_FIELD = "non_string_field"
EMPTY_TEXT = "empty_text"
BAD_MESSAGES = "bad_messages"
TOO_LONG = "too_long"
# SFT: why turns were cut from a conversation (a line whose first exchange is cut is skipped, same names).
EMPTY_REPLY = "empty_reply"  # an assistant turn with no text: it would teach "question -> end token"
DROPPED_BY_TEMPLATE = "dropped_by_template"  # the chat template renders no trace of a message (e.g. a system
# message after the first turn under the Llama-2 template)
NO_REPLY = "no_reply"  # trailing turns that no assistant reply follows
RESERVED_CATEGORY = "reserved_category"  # a category whose folder would be the dataset's own manifest.json
IDENTICAL_PAIR = "identical_pair"  # preference: chosen and rejected tokenize the same, so DPO's gradient on the
# pair is zero: nothing to learn, and a sign of a broken export upstream
# Skipped and counted whatever --on_error says: the line is well formed, it just holds nothing to train on.
ALWAYS_SKIPPED = (BLANK, IDENTICAL_PAIR)


class RecordProblem(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def load_object(raw: bytes) -> Dict[str, Any]:
    if not raw.strip():
        raise RecordProblem(BLANK, "blank line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordProblem(INVALID_UTF8, f"invalid UTF-8 at byte {e.start}; convert the file to UTF-8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordProblem(MALFORMED_JSON, f"malformed JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordProblem(NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def string_field(obj: Dict[str, Any], name: str, default: Optional[str] = None) -> str:
    if name not in obj:
        if default is None:
            raise RecordProblem(MISSING_FIELD, f"field '{name}' is missing")
        return default
    value = obj[name]
    if not isinstance(value, str):
        raise RecordProblem(NON_STRING_FIELD, f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def category_field(obj: Dict[str, Any]) -> str:
    """The optional "category" (default "default"). It names the category's folder beside manifest.json
    (bins.category_dirname keeps such a name as is), so that name is refused; casefolded because
    case-insensitive file systems (macOS, Windows) would collide on MANIFEST.JSON too."""
    category = string_field(obj, "category", "default")
    if category.casefold() == MANIFEST:
        raise RecordProblem(RESERVED_CATEGORY, f"field 'category': {category!r} is the name of the dataset's own "
                                               f"{MANIFEST}; rename the category")
    return category


def pretrain_fields(raw: bytes) -> Tuple[str, str, str]:
    """(source, target, category). `target` is required; `source` defaults to "" and `category` to "default"."""
    obj = load_object(raw)
    target = string_field(obj, "target")
    source = string_field(obj, "source", "")
    category = category_field(obj)
    if not target.strip():
        raise RecordProblem(EMPTY_TEXT, "field 'target' is empty")
    return source, target, category
