"""manifest.json: what went in, what came out, what was dropped and why. Deterministic by construction:
no timings, no absolute paths, no worker counts, sorted keys."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Dict


class Manifest:
    def __init__(self, kind: str, settings: dict):
        self.kind = kind
        self.settings = settings
        # file name -> {"lines": n, "skipped": {reason: n}, "categories": {cat: {"documents": n, "tokens": n}}}
        self.files: Dict[str, dict] = {}
        self.categories: Dict[str, dict] = {}

    def _file(self, name: str) -> dict:
        if name not in self.files:
            self.files[name] = {"lines": 0, "skipped": Counter(),
                                "categories": defaultdict(lambda: {"documents": 0, "tokens": 0, "target_tokens": 0})}
        return self.files[name]

    def line(self, name: str) -> None:
        self._file(name)["lines"] += 1

    def skipped(self, name: str, reason: str) -> None:
        self._file(name)["skipped"][reason] += 1

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
                   "categories": {c: dict(v) for c, v in sorted(f["categories"].items())}}
            for name, f in sorted(self.files.items())
        }
        totals = Counter()
        for f in files.values():
            totals["lines"] += f["lines"]
            totals["skipped"] += sum(f["skipped"].values())
            for c in f["categories"].values():
                totals["documents"] += c["documents"]
                totals["tokens_in"] += c["tokens"]
                totals["target_tokens"] += c["target_tokens"]
        for c in self.categories.values():
            totals["tokens_out"] += c["tokens_out"]
            totals["rows"] += c["rows"]
            totals["padding"] += c["padding"]
        return {"kind": self.kind, "settings": self.settings, "files": files,
                "categories": dict(sorted(self.categories.items())), "totals": dict(sorted(totals.items())),
                "output_hash": output_hash}

    def write(self, path: str, output_hash: str) -> dict:
        data = self.to_dict(output_hash)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=False)
            f.write("\n")
        return data
