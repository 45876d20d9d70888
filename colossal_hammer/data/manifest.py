"""manifest.json: what went in, what came out, what was dropped and why. Deterministic by construction:
no timings, no absolute paths, no worker counts, sorted keys.

Keys:
- `kind` ("pretrain" | "sft" | "preference"), `settings` (everything that determines the output, `pad_id` included;
  `packing` when SFT rows are packed whole, whole_packing.py).
- `chat_template` (SFT only): the exact jinja template the conversations were rendered with, the
  tokenizer's own or the built-in Llama-2/Llama-3 one. Training copies it into the checkpoint's
  tokenizer, so inference formats prompts as the model was taught.
- `files`: per input file `lines`; `skipped` lines by reason (records.py names the reasons);
  `dropped_turns` and `dropped_tokens` by reason: turns cut from conversations that were otherwise
  kept (the tokens they would have had), e.g. `too_long`, `empty_reply`, `dropped_by_template`,
  `no_reply`; and per category `documents`, `tokens`, `target_tokens`.
- Preference data (prepare_preference_dataset.py): a document is a pair, one row holding the chosen and
  the rejected sequence; `chat_template` as for SFT, `long_pairs` (truncate_prompt | skip); per file `truncated_documents` and `truncated_tokens` count the pairs whose
  prompt was cut from its start to fit --max_length and the tokens cut (both sequences' copies).
  Pairs whose chosen and rejected responses tokenize the same are skipped as `identical_pair`.
- `categories`: per category `rows`, `tokens_out`, `padding`, `bins` (rows per bin),
  `chunked_documents`, `dirname` (its folder).
- `totals`: the sums of the above, and `output_hash`: sha256 over each Arrow file's relative path and
  sha256 (bins.content_hash).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Dict, Optional

MANIFEST = "manifest.json"  # its name in the dataset folder, beside the category folders

class Manifest:
    def __init__(self, kind: str, settings: dict, extra: Optional[dict] = None):
        self.kind = kind
        self.counts_truncation = kind == "preference"  # the other kinds never cut a document
        self.settings = settings
        self.extra = dict(extra or {})  # top-level keys written after `settings`, e.g. chat_template
        # file name -> {"lines": n, "skipped": {reason: n}, "dropped_turns": {reason: n},
        #               "dropped_tokens": {reason: n}, "categories": {cat: {"documents": n, "tokens": n, ...}}}
        self.files: Dict[str, dict] = {}
        self.categories: Dict[str, dict] = {}

    def _file(self, name: str) -> dict:
        if name not in self.files:
            self.files[name] = {"lines": 0, "skipped": Counter(), "dropped_turns": Counter(),
                                "dropped_tokens": Counter(), "truncated_documents": 0, "truncated_tokens": 0,
                                "categories": defaultdict(lambda: {"documents": 0, "tokens": 0, "target_tokens": 0})}
        return self.files[name]

    def line(self, name: str) -> None:
        self._file(name)["lines"] += 1

    def skipped(self, name: str, reason: str) -> None:
        self._file(name)["skipped"][reason] += 1

    def dropped(self, name: str, reason: str, turns: int, tokens: int) -> None:
        """Part of a kept document was cut: `turns` turns that would have been `tokens` tokens."""
        entry = self._file(name)
        entry["dropped_turns"][reason] += turns
        entry["dropped_tokens"][reason] += tokens

    def truncated(self, name: str, tokens: int) -> None:
        """A kept document was cut by `tokens` tokens to fit the row."""
        entry = self._file(name)
        entry["truncated_documents"] += 1
        entry["truncated_tokens"] += tokens

    def document(self, name: str, category: str, tokens: int, target_tokens: int) -> None:
        entry = self._file(name)["categories"][category]
        entry["documents"] += 1
        entry["tokens"] += tokens
        entry["target_tokens"] += target_tokens

    def category(self, category: str, **figures) -> None:
        self.categories[category] = figures

    def to_dict(self, output_hash: str) -> dict:
        files = {
            name: {"lines": f["lines"], "skipped": dict(sorted(f["skipped"].items())),
                   "dropped_turns": dict(sorted(f["dropped_turns"].items())),
                   "dropped_tokens": dict(sorted(f["dropped_tokens"].items())),
                   **({"truncated_documents": f["truncated_documents"], "truncated_tokens": f["truncated_tokens"]}
                      if self.counts_truncation else {}),
                   "categories": {c: dict(v) for c, v in sorted(f["categories"].items())}}
            for name, f in sorted(self.files.items())
        }
        totals = Counter()
        for f in files.values():
            totals["lines"] += f["lines"]
            totals["skipped"] += sum(f["skipped"].values())
            totals["dropped_turns"] += sum(f["dropped_turns"].values())
            totals["dropped_tokens"] += sum(f["dropped_tokens"].values())
            if self.counts_truncation:
                totals["truncated_documents"] += f["truncated_documents"]
                totals["truncated_tokens"] += f["truncated_tokens"]
            for c in f["categories"].values():
                totals["documents"] += c["documents"]
                totals["tokens_in"] += c["tokens"]
                totals["target_tokens"] += c["target_tokens"]
        for c in self.categories.values():
            totals["tokens_out"] += c["tokens_out"]
            totals["rows"] += c["rows"]
            totals["padding"] += c["padding"]
        return {"kind": self.kind, "settings": self.settings, **self.extra, "files": files,
                "categories": dict(sorted(self.categories.items())), "totals": dict(sorted(totals.items())),
                "output_hash": output_hash}

    def write(self, path: str, output_hash: str) -> dict:
        data = self.to_dict(output_hash)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=False)
            f.write("\n")
        return data
