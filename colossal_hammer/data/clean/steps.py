"""The pipeline steps of our own: jsonl records in and out (fields untouched), the text a record is judged
by, the length filter, and the per-script switch that lets one rule hold Chinese and English thresholds.

A record's text: `source` and `target` (pretraining), `text`, or the contents of `messages` (SFT) and of a
preference pair's `prompt`/`context`/`chosen`/`rejected`, joined by line breaks. The record itself rides in
the document's metadata and is written back as it came (same fields, same category)."""

import json
import os
import unicodedata
from typing import Any, Dict, List, Optional, Sequence, Tuple

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter

from ..reader import iter_lines
from ..records import BLANK, RecordProblem, category_field, load_object, string_field
from .words import is_cjk

TEXT_FIELDS = ("source", "target", "text", "prompt", "context", "messages", "chosen", "rejected")


def _strings(value) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item.get("content") if isinstance(item, dict) else item)]
    return []


def record_text(obj: Dict[str, Any]) -> str:
    for field in ("source", "target", "text"):
        if field in obj:
            string_field(obj, field)  # a number where text belongs is a broken record, not an empty one
    text = "\n".join(s for field in TEXT_FIELDS if field in obj for s in _strings(obj[field]) if s)
    if not text.strip():
        raise RecordProblem("empty_text", f"no text in any of the fields {', '.join(TEXT_FIELDS)}")
    return text


def normalized_text(doc: Document) -> bytes:
    """What exact deduplication compares: NFKC, case folded, whitespace runs as one space; UTF-8, since
    xxhash 4 hashes bytes only. (No `from __future__ import annotations` in this module: datatrove picks its
    hash function by this return annotation.)"""
    return " ".join(unicodedata.normalize("NFKC", doc.text).casefold().split()).encode("utf-8")


def text_bytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8"))


class RecordReader(PipelineStep):
    """Input files (real paths, each once: reader.list_input_files) → documents; task `rank` of `world_size` reads
    files rank, rank + world_size, ... so every task of every stage sees the same documents in the same order.
    With `bad_writer` (the pass the report counts): a line that is not a record goes there with its reason,
    never silently away, and the task's documents and bytes per category are written to `counts_dir`."""

    name = "jsonl records"
    type = "📖 - READER"

    def __init__(self, files: Sequence[Tuple[str, str]], bad_writer: Optional[JsonlWriter] = None,
                 counts_dir: Optional[str] = None):
        super().__init__()
        self.files = list(files)  # (path, name as the report and errors give it)
        self.bad_writer = bad_writer
        self.counts_dir = counts_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not self.bad_writer:
            yield from self._documents(rank, world_size, None, {}, {})
            return
        categories: Dict[str, List[int]] = {}
        bad_lines: Dict[str, int] = {}
        with self.bad_writer as bad:
            yield from self._documents(rank, world_size, bad, categories, bad_lines)
        os.makedirs(self.counts_dir, exist_ok=True)
        with open(os.path.join(self.counts_dir, f"{rank:05d}.json"), "w", encoding="utf-8") as f:
            json.dump({"categories": categories, "bad_lines": bad_lines}, f, ensure_ascii=False)

    def _documents(self, rank, world_size, bad, categories, bad_lines):
        for path, name in self.files[rank::world_size]:
            for line_no, raw in iter_lines(path, name):
                try:
                    obj = load_object(raw)
                    category = category_field(obj)
                    text = record_text(obj)
                except RecordProblem as p:
                    if p.reason != BLANK:
                        bad_lines[p.reason] = bad_lines.get(p.reason, 0) + 1
                        if bad is not None:
                            bad.write(Document(text=raw.decode("utf-8", "replace"), id=f"{name}:{line_no}",
                                               metadata={"category": "", "filter_reason": p.reason,
                                                         "detail": p.detail}), rank)
                    continue
                figures = categories.setdefault(category, [0, 0])
                figures[0] += 1
                figures[1] += len(text.encode("utf-8"))
                yield Document(text=text, id=f"{name}:{line_no}", metadata={"category": category, "record": obj})


def _record_of(writer, doc: Document) -> dict:
    return doc.metadata["record"]


class RecordWriter(JsonlWriter):
    """Documents → their records as they came, one shard per task (`00000.jsonl`, ...), uncompressed."""

    name = "jsonl records"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.jsonl", compression=None, adapter=_record_of)


class LengthFilter(BaseFilter):
    """Documents by their count of visible characters: whitespace is not counted, so a Chinese text, which has
    none, is not measured shorter than an English one for that."""

    name = "length"

    def __init__(self, min_chars: int, max_chars: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document):
        visible = sum(1 for c in doc.text if not c.isspace())
        if visible < self.min_chars:
            return False, "too_short"
        if visible > self.max_chars:
            return False, "too_long"
        return True


class ByScript(BaseFilter):
    """One rule, two calibrations: `cjk` judges a document whose letters are mostly Han or kana, `latin` the
    rest. The inner filter only judges: a document is kept whole or removed (C4's line removal is not applied,
    so a kept record is written back unchanged)."""

    def __init__(self, name: str, latin: BaseFilter, cjk: BaseFilter, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.name = name
        self.latin, self.cjk = latin, cjk

    def filter(self, doc: Document):
        text = doc.text
        judge = self.cjk if is_cjk(text) else self.latin
        result = judge.filter(doc)
        doc.text = text
        keep, reason = result if isinstance(result, tuple) else (result, None)
        return True if keep else (False, reason or "rejected")

