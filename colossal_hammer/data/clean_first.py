"""prepare_*_dataset.py --clean_dedup/--clean_filters: the inputs cleaned (data/clean) before they are tokenized.

The cleaned shards go to OUT.cleaned (beside the output, removed once the dataset is written or the run
fails) and are what the pipeline reads; the manifest names them `cleaned/00000.jsonl ...` (no temporary
path, so the manifest stays the same from run to run) and holds the cleaning report as `clean`, whose
examples and counts name the original files and lines.
"""

from __future__ import annotations

import os
import shutil
from typing import List, Optional, Tuple

from .reader import InputFile


def plan(dedup: str, filters: str, workers: int, on_error: str):
    """The cleaning to run (flags checked now, before any work), or None."""
    if dedup == "none" and filters == "none":
        return None
    from .clean.cli import DEDUPS, FILTER_NAMES, parse_choices
    from .clean.pipeline import CleanConfig

    cfg = CleanConfig(dedup=parse_choices(dedup, DEDUPS, "--clean_dedup"),
                      filters=parse_choices(filters, FILTER_NAMES, "--clean_filters"), workers=max(1, workers))
    return cfg, on_error


def _folder(out_dir: str) -> str:
    return f"{out_dir}.cleaned"


def run(cleaning, input_dirs: List[str], out_dir: str) -> Tuple[List[InputFile], dict]:
    from .clean.cli import clean_into

    cfg, on_error = cleaning
    folder = _folder(out_dir)
    remove(out_dir)  # a leftover of a killed run
    report = clean_into(input_dirs, folder, cfg, on_error)
    shards = sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))
    return [InputFile(os.path.realpath(os.path.join(folder, n)), f"cleaned/{n}") for n in shards], report


def remove(out_dir: Optional[str]) -> None:
    shutil.rmtree(_folder(out_dir), ignore_errors=True)
