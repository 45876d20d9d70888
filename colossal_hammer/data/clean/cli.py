"""Clean jsonl corpora on datatrove: exact and MinHash near-duplicate removal across every file and category,
and quality filters (length, Gopher, C4, FineWeb) calibrated for Chinese as well as English.

In: the jsonl the prepare commands read (pretraining, SFT or preference records, *.jsonl[.gz|.zst]); out:
OUT/00000.jsonl ... holding the records that were kept, exactly as they came (same fields and category),
and OUT/clean_report.json (report.py). Feed OUT to prepare_*_dataset.py as an input folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import asdict
from typing import List, Optional

from ...errors import InputError, run_cli
from .. import output
from ..reader import list_input_files
from .pipeline import CleanConfig, StageFailed, clean_work, run_pipeline, stage_names
from .report import REPORT

DEDUPS = ("exact", "minhash")
FILTER_NAMES = ("length", "gopher", "c4", "fineweb")


def parse_choices(value: str, allowed, flag: str) -> tuple:
    if value == "none":
        return ()
    names = tuple(v for v in value.split(",") if v)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise InputError(f"{flag} {value}: use none or a comma-separated choice of {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data_input_dirs", required=True,
      help="Comma-separated folders of *.jsonl, *.jsonl.gz, *.jsonl.zst files; a file reached twice is read once.")
    a("--output_dir", required=True,
      help="Folder for the cleaned shards and clean_report.json: must not exist (unless --overwrite) and must not "
           "be, contain or lie inside an input folder.")
    a("--dedup", default="exact,minhash",
      help="none, or a comma-separated choice of exact (same text after NFKC, case folding and whitespace "
           "collapsing) and minhash (near duplicates by MinHash LSH over word 5-grams, a Han character being a "
           "word); one document of each group of duplicates is kept, the same one on every run with the same input "
           "and flags.")
    a("--filters", default="length,gopher,c4,fineweb",
      help="none, or a comma-separated choice of length (--min_chars, --max_chars), gopher (repetition and "
           "quality), c4 and fineweb (their quality rules), applied in the order given; Chinese documents get "
           "thresholds measured in characters (data/clean/filters.py).")
    a("--min_chars", type=int, default=20, help="length: fewest visible (non-space) characters a document keeps.")
    a("--max_chars", type=int, default=1_000_000, help="length: most visible characters a document keeps.")
    a("--minhash_ngrams", type=int, default=5, help="minhash: words per shingle.")
    a("--minhash_buckets", type=int, default=14,
      help="minhash: LSH bands b; with r hashes per band a pair of Jaccard similarity s is found with probability "
           "1-(1-s^r)^b (14 x 8: 0.5 at s=0.72, 0.92 at 0.8, 0.9996 at 0.9).")
    a("--minhash_hashes_per_bucket", type=int, default=8, help="minhash: hashes per band r.")
    a("--minhash_seed", type=int, default=1, help="minhash: seed of the hash functions.")
    a("--tasks", type=int, default=4,
      help="Shards the work is split into (and the most output shards); the output depends on it, so keep it "
           "for reruns.")
    a("--workers", type=int, default=max(1, os.cpu_count() or 1),
      help="Tasks run at once on this machine; the output does not depend on it.")
    a("--executor", choices=("local",), default="local",
      help="Where tasks run: local (datatrove's LocalPipelineExecutor). Slurm and Ray are not built yet.")
    a("--on_error", choices=("fail", "skip"), default="fail",
      help="On a line that is not a record: stop with an error naming file and line, or skip it (counted in the "
           "report with examples).")
    a("--overwrite", action="store_true",
      help="Replace an existing output folder that an earlier clean wrote (its shards and report, nothing else).")
    return p


def _config(args) -> CleanConfig:
    cfg = CleanConfig(dedup=parse_choices(args.dedup, DEDUPS, "--dedup"),
                      filters=parse_choices(args.filters, FILTER_NAMES, "--filters"),
                      min_chars=args.min_chars, max_chars=args.max_chars, minhash_ngrams=args.minhash_ngrams,
                      minhash_buckets=args.minhash_buckets, minhash_hashes_per_bucket=args.minhash_hashes_per_bucket,
                      minhash_seed=args.minhash_seed, tasks=args.tasks, workers=args.workers, executor=args.executor)
    for flag in ("min_chars", "minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket", "tasks", "workers"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    if args.max_chars < args.min_chars:
        raise InputError(f"--max_chars {args.max_chars} is below --min_chars {args.min_chars}")
    return cfg


def _ours(out_dir: str) -> bool:
    names = os.listdir(out_dir)
    return REPORT in names and all(n == REPORT or (n.endswith(".jsonl") and n[:-6].isdigit()) for n in names)


def _check_output(out_dir: str, input_dirs: List[str], overwrite: bool) -> None:
    if not out_dir:
        raise InputError("--output_dir: give an output folder (not the file system root)")
    output.check_apart(out_dir, {d: "input folder" for d in input_dirs}, flag="--output_dir")
    if not os.path.lexists(out_dir):
        return
    if not overwrite:
        raise InputError(f"--output_dir: {out_dir} exists; remove it or pass --overwrite")
    if os.path.islink(out_dir) or not os.path.isdir(out_dir) or not _ours(out_dir):
        raise InputError(f"--output_dir: {out_dir} is not a folder an earlier clean wrote (its numbered shards and "
                         f"{REPORT} only), so --overwrite will not delete it; remove it yourself or choose another")


def clean_into(input_dirs: List[str], out_dir: str, cfg: CleanConfig, on_error: str = "fail",
               overwrite: bool = False) -> dict:
    """Clean `input_dirs` into `out_dir` (checked, built aside and swapped in whole); returns the report."""
    from . import report as reports

    _check_output(out_dir, input_dirs, overwrite)
    files = list_input_files(input_dirs)
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    work = f"{out_dir}.work-{os.getpid()}"
    keep_work = False
    try:
        os.makedirs(tmp_dir)
        os.makedirs(work)

        def stop_on_bad_lines():
            bad = reports.bad_line_examples(work)
            if bad and on_error == "fail":
                raise InputError(f"{bad[0]['id']}: {bad[0]['detail']}")

        try:
            run_pipeline([(f.path, f.name) for f in files], tmp_dir, work, cfg, stop_on_bad_lines)
        except StageFailed:
            keep_work = True
            raise
        bad = reports.bad_line_examples(work)
        settings = {k: v for k, v in asdict(cfg).items() if k != "workers"}
        settings["minhash_threshold"] = round(cfg.threshold(), 4)
        try:
            result = reports.build(settings, [f.name for f in files], work, tmp_dir, stage_names(cfg))
        except InputError:
            keep_work = True
            raise
        result["input"]["bad_line_examples"] = bad[:reports.EXAMPLES]
        reports.write(result, tmp_dir)
        output.replace(tmp_dir, out_dir, flag="--output_dir",
                       foreign_of=lambda d: None if _ours(d) else "is not a folder an earlier clean wrote")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not keep_work:
            clean_work(work)
    totals = result["totals"]
    steps = ", ".join(f"{s['stage']} -{sum(v['documents'] for v in s['removed'].values()):,}" for s in result["stages"])
    print(f"clean: {totals['documents_in']:,} documents in, {totals['documents_out']:,} out ({steps}; "
          f"{totals['bad_lines']:,} bad lines) -> {out_dir}", file=sys.stderr)
    return result


def clean(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = _config(args)
    input_dirs = [d for d in args.data_input_dirs.split(",") if d]
    return clean_into(input_dirs, args.output_dir.rstrip("/"), cfg, args.on_error, args.overwrite)


def main(argv: Optional[List[str]] = None) -> dict:
    return run_cli(lambda: clean(argv))
