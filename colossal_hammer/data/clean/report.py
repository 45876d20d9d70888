"""clean_report.json, written beside the cleaned shards: per stage and per category the documents and text
bytes (UTF-8) that came in, were removed and were kept, the count per rule, and a few removed examples per
rule. Counted from three independent sources: what the reader read (its per-task counts), what each stage
wrote as removed, and the output shards themselves; a run whose three do not add up fails instead of
reporting figures that are wrong.

Keys: `settings`; `input` (`files`, `bad_lines` by reason, `categories`); `stages` in order, each `stage`,
`in`, `removed`, `kept` (per category {"documents", "bytes"}), `rules` (documents removed per rule) and
`examples` (per rule up to EXAMPLES of {"id": "FILE:LINE", "text": its first 200 characters}); `output`
(`files`, `categories`); `totals`.
"""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict
from typing import Dict, List

from ...errors import InputError
from ..reader import iter_lines

REPORT = "clean_report.json"
EXAMPLES = 3


def _empty():
    return defaultdict(lambda: {"documents": 0, "bytes": 0})


def _plain(figures) -> Dict[str, dict]:
    return {c: dict(v) for c, v in sorted(figures.items()) if v["documents"]}


def _jsonl(folder: str):
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        for _, raw in iter_lines(path):
            if raw.strip():
                yield path, json.loads(raw)


def read_counts(counts_dir: str):
    categories, bad = _empty(), defaultdict(int)
    for path in sorted(glob.glob(os.path.join(counts_dir, "*.json"))):
        with open(path, encoding="utf-8") as f:
            counts = json.load(f)
        for c, (docs, size) in counts["categories"].items():
            categories[c]["documents"] += docs
            categories[c]["bytes"] += size
        for reason, n in counts["bad_lines"].items():
            bad[reason] += n
    return categories, dict(sorted(bad.items()))


def bad_line_examples(work: str) -> List[dict]:
    return [{"id": d["id"], "reason": d["metadata"]["filter_reason"], "detail": d["metadata"]["detail"]}
            for _, d in _jsonl(os.path.join(work, "removed", "read"))]


def build(settings: dict, file_names: List[str], work: str, out_dir: str, stages: List[str]) -> dict:
    from .steps import record_text
    from ..records import category_field

    read, bad = read_counts(os.path.join(work, "counts"))
    current = {c: dict(v) for c, v in read.items()}
    report_stages = []
    for stage in stages[1:]:
        removed, rules, examples = _empty(), defaultdict(int), defaultdict(list)
        for _, doc in _jsonl(os.path.join(work, "removed", stage)):
            category = doc["metadata"]["category"]
            removed[category]["documents"] += 1
            removed[category]["bytes"] += len(doc["text"].encode("utf-8"))
            rule = doc["metadata"].get("filter_reason") or ("duplicate" if stage in ("exact", "minhash") else stage)
            rules[rule] += 1
            if len(examples[rule]) < EXAMPLES:
                examples[rule].append({"id": doc["id"], "text": doc["text"][:200]})
        kept = {c: {k: v[k] - removed[c][k] for k in v} for c, v in current.items()}
        report_stages.append({"stage": stage, "in": _plain(current), "removed": _plain(removed),
                              "kept": _plain(kept), "rules": dict(sorted(rules.items())),
                              "examples": {r: examples[r] for r in sorted(examples)}})
        current = kept
    output, out_files = _empty(), []
    for path, record in _jsonl(out_dir):
        name = os.path.basename(path)
        if name not in out_files:
            out_files.append(name)
        category = category_field(record)
        output[category]["documents"] += 1
        output[category]["bytes"] += len(record_text(record).encode("utf-8"))
    if _plain(output) != _plain(current):
        raise InputError(f"clean: the output ({_plain(output)}) is not what was read less what the stages removed "
                         f"({_plain(current)}); the run's data in {work} is kept for a look")
    totals = {"documents_in": sum(v["documents"] for v in read.values()),
              "bytes_in": sum(v["bytes"] for v in read.values()),
              "documents_out": sum(v["documents"] for v in output.values()),
              "bytes_out": sum(v["bytes"] for v in output.values()),
              "bad_lines": sum(bad.values())}
    return {"settings": settings,
            "input": {"files": file_names, "bad_lines": bad, "categories": _plain(read)},
            "stages": report_stages,
            "output": {"files": out_files, "categories": _plain(output)},
            "totals": totals}


def write(report: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=2)
        f.write("\n")
