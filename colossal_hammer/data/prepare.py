"""The preparation pipeline shared by pretraining and SFT data: jsonl lines → documents → rows → bins.

Lines are read in a fixed file order and handed in batches to worker processes, whose results come
back in submission order (at most a few batches in flight, so memory stays flat); the main process
alone packs and writes, which makes the output independent of the number of workers. Everything is
written to OUT.tmp-<pid> and renamed to OUT only when complete (output.py: which OUT is allowed, what
--overwrite may replace, leftovers of killed runs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Tuple

from . import clean_first, output
from .bins import CategoryBins, content_hash
from .manifest import MANIFEST, Manifest
from .packing import OnePerRow, Packer
from .whole_packing import WINDOW, WholePacker
from ..errors import InputError
from .reader import iter_lines, list_input_files
from .records import ALWAYS_SKIPPED, TOO_LONG


@dataclass
class PrepareConfig:
    data_input_dirs: str
    tokenizer_dir: str
    data_output_dirs: str
    max_length: int = 4096
    num_spliced_dataset_bins: int = 10
    num_workers: int = 1
    seed: int = 42
    on_error: str = "fail"
    overwrite: bool = False
    pack: bool = True
    # packed rows keep each document whole (SFT conversations): best fit within a window, never chunked
    whole_documents: bool = False
    clean_dedup: str = "none"  # python -m colossal_hammer.data.clean run on the inputs first (clean_first.py)
    clean_filters: str = "none"
    batch_lines: int = 512

    def input_dirs(self) -> List[str]:
        return [d for d in self.data_input_dirs.split(",") if d]

    def settings(self) -> dict:
        """What determines the output (recorded in the manifest); not worker counts or output paths."""
        keep = ("max_length", "num_spliced_dataset_bins", "seed", "on_error", "pack")
        settings = {k: v for k, v in asdict(self).items() if k in keep}
        if self.pack and self.whole_documents:  # absent otherwise: manifests of chunked packing stay as they were
            settings["packing"] = f"whole documents, best fit decreasing per {WINDOW} documents"
        if self.clean_dedup != "none" or self.clean_filters != "none":  # absent otherwise, as above
            settings.update(clean_dedup=self.clean_dedup, clean_filters=self.clean_filters)
        return settings

    def packs_whole(self) -> bool:
        return self.pack and self.whole_documents


def build_parser(description: str) -> argparse.ArgumentParser:
    """The flags both preparation scripts share (Colossal-LLaMA's names)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = parser.add_argument
    a("--data_input_dirs", required=True, help="Comma-separated folders of *.jsonl, *.jsonl.gz, *.jsonl.zst files.")
    a("--tokenizer_dir", required=True, help="HF tokenizer folder.")
    a("--data_output_dirs", required=True,
      help="Output folder: must not exist unless --overwrite, and must not be, contain or lie inside an input "
           "or the tokenizer folder.")
    a("--max_length", type=int, default=4096, help="Tokens per row.")
    a("--num_spliced_dataset_bins", type=int, default=10, help="Bins per category (bucket k = bin k of every category).")
    a("--num_workers", type=int, default=max(1, (os.cpu_count() or 1)), help="Tokenizer processes.")
    a("--seed", type=int, default=42, help="Seed of the row-to-bin assignment.")
    a("--on_error", choices=("fail", "skip"), default="fail",
      help="On a bad line: stop with an error naming file and line, or skip it and count it in the manifest.")
    a("--overwrite", action="store_true",
      help="Replace an existing output folder, once the new one is complete; only a folder an earlier run of "
           "prepare_*_dataset.py wrote (its manifest.json and bins, nothing else) is ever deleted.")
    a("--clean_dedup", default="none",
      help="Clean the inputs first with python -m colossal_hammer.data.clean (its defaults, --num_workers "
           "workers): none, or its --dedup (exact,minhash); its report goes into the manifest as `clean`.")
    a("--clean_filters", default="none", help="With the above: none, or clean's --filters (length,gopher,c4,fineweb).")
    return parser


# ---- worker side -----------------------------------------------------------------------------------
_WORKER = None


def _init_worker(factory, tokenizer_dir):
    global _WORKER
    _WORKER = factory(tokenizer_dir)


def _run_worker(batch):
    return _WORKER(batch)


def _ordered_results(batches, factory, tokenizer_dir, num_workers: int) -> Iterator[list]:
    if num_workers <= 1:
        worker = factory(tokenizer_dir)
        for batch in batches:
            yield worker(batch)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(factory, tokenizer_dir)) as pool:
        pending = deque()
        for batch in batches:
            pending.append(pool.apply_async(_run_worker, (batch,)))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batches(files, size: int) -> Iterator[list]:
    batch = []
    for file_index, f in enumerate(files):
        for line_no, raw in iter_lines(f.path, f.name):
            batch.append((file_index, line_no, raw))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


# ---- main side -------------------------------------------------------------------------------------
class _Category:
    """One category's rows (packed, or one document each) streaming into its bins; figures from the packer's stats."""

    def __init__(self, name, cfg: PrepareConfig, out_dir: str, pad_id: int):
        self.bins = CategoryBins(out_dir, name, cfg.num_spliced_dataset_bins, cfg.seed)
        if not cfg.pack:
            self.rows = OnePerRow()
        elif cfg.whole_documents:
            self.rows = WholePacker(cfg.max_length, pad_id)
        else:
            self.rows = Packer(cfg.max_length, pad_id)

    def add(self, ids, labels, doc_lengths=None) -> None:
        rows = self.rows.add(ids, labels, doc_lengths) if doc_lengths else self.rows.add(ids, labels)
        for row in rows:
            self.bins.add(row)

    def finish(self) -> dict:
        for row in self.rows.drain():
            self.bins.add(row)
        self.bins.seal()
        stats = self.rows.stats
        return {"rows": stats.rows, "tokens_out": stats.tokens_out, "padding": stats.padding,
                "bins": list(self.bins.rows_per_bin), "chunked_documents": stats.chunked_documents,
                "dirname": os.path.basename(self.bins.dir)}


def _check_output(cfg: PrepareConfig) -> str:
    out_dir = cfg.data_output_dirs.rstrip("/")
    if not out_dir:
        raise InputError("--data_output_dirs: give an output folder (not the file system root)")
    inputs = {d: "input folder" for d in cfg.input_dirs()}
    if os.path.isdir(cfg.tokenizer_dir):  # else a hub name, nothing on disk to protect
        inputs.setdefault(cfg.tokenizer_dir, "tokenizer folder")
    output.check_apart(out_dir, inputs)
    output.check_replaceable(out_dir, cfg.overwrite)
    return out_dir


def run_prepare(cfg: PrepareConfig, kind: str, worker_factory: Callable,
                describe: Callable[[], Tuple[int, dict]]) -> dict:
    """Run the pipeline; returns the manifest dict. Raises InputError on user mistakes.

    `describe()` loads the tokenizer and returns (pad id, more top-level manifest keys); it is called only
    once the flags and folders passed their checks, so those mistakes are told before transformers is even
    imported. Workers return ("skip", file, line, reason, detail) or ("doc", file, line,
    category, ids, labels, target_tokens, dropped[, extra]), dropped being None or (reason, turns, tokens) and
    the optional `extra` a dict: `doc_lengths` (the row's own split into documents, unpacked rows only) and
    `truncated` (tokens cut from the document to make it fit, counted in the manifest)."""
    if cfg.max_length < 2:
        raise InputError(f"--max_length must be >= 2 (got {cfg.max_length})")
    if cfg.num_spliced_dataset_bins < 1:
        raise InputError("--num_spliced_dataset_bins must be >= 1")
    out_dir = _check_output(cfg)
    cleaning = clean_first.plan(cfg.clean_dedup, cfg.clean_filters, cfg.num_workers, cfg.on_error)
    files = list_input_files(cfg.input_dirs())
    pad_id, extra = describe()
    if cleaning:
        files, report = clean_first.run(cleaning, cfg.input_dirs(), out_dir)
        extra = {**extra, "clean": report}

    import datasets
    from tqdm import tqdm

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()

    output.clean_stale(out_dir)
    tmp_dir = output.make_tmp(out_dir)
    manifest = Manifest(kind, {**cfg.settings(), "pad_id": pad_id}, extra)
    categories: Dict[str, _Category] = {}
    start = time.perf_counter()
    tokens = 0
    bar = tqdm(desc=f"prepare {kind}", unit="doc", disable=None, file=sys.stderr)
    try:
        for results in _ordered_results(_batches(files, cfg.batch_lines), worker_factory, cfg.tokenizer_dir,
                                        cfg.num_workers):
            for kind_, file_index, line_no, *rest in results:
                name = files[file_index].name
                manifest.line(name)
                if kind_ == "skip":
                    reason, detail = rest
                    if reason not in ALWAYS_SKIPPED and cfg.on_error == "fail":
                        raise InputError(f"{name}:{line_no}: {detail}")
                    manifest.skipped(name, reason)
                    continue
                category, ids, labels, target_tokens, dropped, *more = rest
                extra = more[0] if more else {}
                if cfg.packs_whole() and len(ids) > cfg.max_length:
                    # a row cannot hold it whole, and cutting it is what whole packing exists to avoid
                    if cfg.on_error == "fail":
                        raise InputError(f"{name}:{line_no}: {len(ids)} tokens, longer than --max_length "
                                         f"{cfg.max_length}; a packed document is never cut")
                    manifest.skipped(name, TOO_LONG)
                    continue
                if category not in categories:
                    categories[category] = _Category(category, cfg, tmp_dir, pad_id)
                categories[category].add(ids, labels, extra.get("doc_lengths"))
                manifest.document(name, category, len(ids), target_tokens)
                if dropped:
                    manifest.dropped(name, *dropped)
                if extra.get("truncated"):
                    manifest.truncated(name, extra["truncated"])
                tokens += len(ids)
            bar.update(sum(1 for r in results if r[0] == "doc"))
            bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - start):,.0f}")
        bar.close()
        if not categories:
            # name what was skipped: identical pairs, say, are skipped whatever --on_error says
            skipped = sum((f["skipped"] for f in manifest.files.values()), Counter())
            why = ", ".join(f"{r} {n:,}" for r, n in sorted(skipped.items())) or "no lines"
            raise InputError(f"{cfg.data_input_dirs}: no document survived (skipped: {why})")
        digests = {}
        for name in sorted(categories):
            manifest.category(name, **categories[name].finish())
            digests.update(categories[name].bins.digests)
        data = manifest.write(os.path.join(tmp_dir, MANIFEST), content_hash(digests))
        output.replace(tmp_dir, out_dir)
        clean_first.remove(out_dir)
    except BaseException as e:
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        clean_first.remove(out_dir)
        failure = output.write_failure(e, tmp_dir, out_dir) if isinstance(e, OSError) else None
        if failure is not None:
            raise failure from None
        raise
    elapsed = time.perf_counter() - start
    totals = data["totals"]
    print(f"{kind}: {totals.get('documents', 0):,} documents, {totals.get('tokens_in', 0):,} tokens -> "
          f"{totals.get('rows', 0):,} rows ({totals.get('padding', 0):,} padding), "
          f"{totals.get('skipped', 0):,} lines skipped, {elapsed:.1f}s, "
          f"{totals.get('tokens_in', 0) / max(elapsed, 1e-9):,.0f} tokens/s -> {out_dir}", file=sys.stderr)
    if totals.get("truncated_documents"):
        print(f"{kind}: {totals['truncated_documents']:,} documents cut to fit --max_length "
              f"({totals['truncated_tokens']:,} tokens)", file=sys.stderr)
    if totals.get("dropped_turns"):
        reasons = {}
        for f in data["files"].values():
            for reason, n in f["dropped_turns"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        print(f"{kind}: {totals['dropped_turns']:,} turns ({totals['dropped_tokens']:,} tokens) cut from kept "
              f"conversations: " + ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items())), file=sys.stderr)
    return data
