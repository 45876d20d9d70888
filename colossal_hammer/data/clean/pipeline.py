"""The cleaning run: datatrove executors one after another, each stage's removals written where the report
reads them.

    read → exact dedup → filters (in the order given) → MinHash near dedup → OUT/00000.jsonl ...

Exact dedup is datatrove's three steps (signature per task, one finder over all of them, filter), MinHash
its four (signature, buckets, clusters, filter): both see every document of every file and category, so a
duplicate is found wherever it is. One document of each group is kept: which one is fixed by the input and
the flags (exact: datatrove keeps the lowest document index of the lowest-sorting signature file; MinHash:
the root of its union-find cluster). Every task of every stage reads the same documents in the same order (the
documents of task r are those of files r, r + tasks, ...), which is what lets a later step find a document
by its index; the output depends on the input and the flags (`--tasks` included), never on `--workers`.
Intermediate data lives in OUT.work-<pid> and is deleted at the end; memory is bounded by what datatrove
holds per task (one document at a time; sorted signature files are merged, not loaded).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

from ...errors import InputError


class StageFailed(InputError):
    """A datatrove stage failed: its log, in the work folder, is kept."""


@dataclass
class CleanConfig:
    dedup: Tuple[str, ...] = ("exact", "minhash")
    filters: Tuple[str, ...] = ("length", "gopher", "c4", "fineweb")
    min_chars: int = 20
    max_chars: int = 1_000_000
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    minhash_seed: int = 1
    tasks: int = 4
    workers: int = 1
    executor: str = "local"

    def threshold(self) -> float:
        """The Jaccard similarity at which a pair is found with probability about 1/2: (1/b)^(1/r)."""
        return (1 / self.minhash_buckets) ** (1 / self.minhash_hashes_per_bucket)

    def found(self, similarity: float) -> float:
        """The probability that MinHash LSH puts a pair of this 5-gram Jaccard similarity in one bucket."""
        return 1 - (1 - similarity ** self.minhash_hashes_per_bucket) ** self.minhash_buckets


def stage_names(cfg: CleanConfig) -> List[str]:
    from .filters import FILTERS

    names = ["read"] + (["exact"] if "exact" in cfg.dedup else [])
    names += [stage for f in cfg.filters for stage, _ in FILTERS[f]]
    return names + (["minhash"] if "minhash" in cfg.dedup else [])


@contextlib.contextmanager
def _quiet(log_path: str):
    """datatrove logs every task to stderr (loguru) from this process and its workers: send file descriptor 2
    to the run's log while it runs (the log's end is shown if the run fails)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _log_tail(log_path: str, lines: int = 5) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = [line.rstrip() for line in f if "ERROR" in line or "Error" in line]
    except OSError:
        return ""
    return " | ".join(tail[-lines:])


def run_pipeline(files: List[Tuple[str, str]], out_dir: str, work: str, cfg: CleanConfig,
                 after_read: Callable[[], None] = lambda: None) -> None:
    """Run every stage; `files` are (real path, name). Removed documents land in work/removed/<stage>/.
    `after_read` is called once every line has been read (it may stop the run before the MinHash stages)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
                                          MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from .filters import FILTERS, build
    from .steps import RecordReader, RecordWriter, normalized_text
    from .words import WORDS

    tasks = max(1, min(cfg.tasks, len(files)))  # a task without a file would only shift the others' shards
    log_path = os.path.join(work, "datatrove.log")

    def removed(stage):
        return JsonlWriter(os.path.join(work, "removed", stage), output_filename="${rank}.jsonl", compression=None)

    def run(name, pipeline, n_tasks):
        executor = LocalPipelineExecutor(pipeline, tasks=n_tasks, workers=min(cfg.workers, n_tasks),
                                         logging_dir=os.path.join(work, "logs", name), skip_completed=False,
                                         start_method="fork")
        try:
            with _quiet(log_path):
                executor.run()
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - a failed task surfaces as whatever its worker raised
            cause = _log_tail(log_path) or f"{type(e).__name__}: {e}"
            raise StageFailed(f"clean: stage {name} failed: {cause} (log: {log_path})") from None

    reader = lambda bad=None: RecordReader(files, bad, os.path.join(work, "counts"))  # noqa: E731
    exact = ExactDedupConfig(content_getter=normalized_text)
    if "exact" in cfg.dedup:
        run("exact-signatures", [reader(), ExactDedupSignature(os.path.join(work, "exact", "sigs"), config=exact)],
            tasks)
        run("exact-duplicates", [ExactFindDedups(os.path.join(work, "exact", "sigs"),
                                                 os.path.join(work, "exact", "dups"), config=exact)], 1)

    steps = [reader(removed("read"))]
    if "exact" in cfg.dedup:
        steps.append(ExactDedupFilter(os.path.join(work, "exact", "dups"), config=exact,
                                      exclusion_writer=removed("exact")))
    for f in cfg.filters:
        for stage, builder in FILTERS[f]:
            steps.append(build(stage, builder, removed(stage), cfg.min_chars, cfg.max_chars))
    if "minhash" not in cfg.dedup:
        run("read-and-filter", steps + [RecordWriter(out_dir)], tasks)
        after_read()
        return
    filtered = os.path.join(work, "filtered")
    run("read-and-filter", steps + [JsonlWriter(filtered, output_filename="${rank}.jsonl", compression=None)], tasks)
    after_read()
    if not os.path.isdir(filtered) or not os.listdir(filtered):
        return  # nothing passed the filters
    # sha1: MinHash hashes its shingles as str, which xxhash 4 (datatrove's default) refuses
    config = MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                           hashes_per_bucket=cfg.minhash_hashes_per_bucket, seed=cfg.minhash_seed,
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
    read_filtered = lambda: JsonlReader(filtered, glob_pattern="*.jsonl")  # noqa: E731
    shards = len(os.listdir(filtered))
    mh = os.path.join(work, "minhash")
    run("minhash-signatures", [read_filtered(), MinhashDedupSignature(os.path.join(mh, "sigs"), config=config,
                                                                          language=WORDS)],
        shards)
    run("minhash-buckets", [MinhashDedupBuckets(os.path.join(mh, "sigs"), os.path.join(mh, "buckets"), config=config)],
        cfg.minhash_buckets)
    run("minhash-clusters", [MinhashDedupCluster(os.path.join(mh, "buckets"), os.path.join(mh, "remove"),
                                                     config=config)], 1)
    run("minhash-filter", [read_filtered(), MinhashDedupFilter(os.path.join(mh, "remove"),
                                                               exclusion_writer=removed("minhash")),
                           RecordWriter(out_dir)], shards)


def clean_work(work: Optional[str]) -> None:
    if work:
        shutil.rmtree(work, ignore_errors=True)
