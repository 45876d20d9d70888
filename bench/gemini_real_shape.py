"""Gemini at a real shape on CPU: a >= 300M-parameter Llama from sharded safetensors, 2 ranks. Prints figures.

Builds a random Llama from a config (default: hidden 1024, 24 layers, vocab 32000, 374M parameters),
saves it as sharded safetensors in a temporary folder, then runs `train.py --plugin gemini --pretrained`
on 2 processes (torchrun, gloo, CPU) for a few steps and saves a checkpoint. Each rank runs train.py's own
Trainer inside this script (`--worker`), so that it can report per rank: the load time (model from disk,
chunks built, optimizer boosted), the peak RSS while training and including the checkpoint save, and what
Gemini's chunk manager holds. Also printed: step times and the checkpoint's size on disk.

Needs ~10+ GiB of RAM and several minutes; run nothing else heavy beside it.

    python bench/gemini_real_shape.py [--hidden 1024] [--layers 24] [--vocab 32000] [--steps 3] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3


def build_checkpoint(a, folder: Path) -> int:
    """A random Llama of the requested shape saved as sharded safetensors (what a user downloads)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                         num_attention_heads=a.heads, num_key_value_heads=a.heads, vocab_size=a.vocab,
                         max_position_embeddings=4096, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="200MB")
    return sum(p.numel() for p in model.parameters())


def worker(train_argv: list[str], report_dir: Path) -> None:
    """One rank: train.py's Trainer, timed and measured from the inside."""
    import torch.distributed as dist

    from colossal_hammer.training.config import parse_config
    from colossal_hammer.training.loop import Trainer

    def peak_rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux: KiB

    start = time.perf_counter()
    trainer = Trainer(parse_config(train_argv))
    load_s = time.perf_counter() - start
    rss = {"after_load": peak_rss()}
    save = trainer.save

    def measured_save():
        rss.setdefault("train", peak_rss())  # the peak before the first save began
        t = time.perf_counter()
        path = save()
        rss["save_s"] = time.perf_counter() - t
        return path

    trainer.save = measured_save
    trainer.fit()
    rss["incl_save"] = peak_rss()
    report = {"rank": trainer.rank, "load_s": load_s, "peak_rss_gb": rss,
              "gemini_layout": getattr(trainer.plugin, "gemini_layout", None)}
    (report_dir / f"rank-{trainer.rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[3:], Path(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--keep", type=Path, default=None, help="Keep model, checkpoint and logs in this folder.")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        model_dir, reports, logs = root / "model", root / "reports", root / "logs"
        reports.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        n_params = build_checkpoint(a, model_dir)
        print(f"model: {n_params / 1e6:.1f}M parameters (hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}), "
              f"{len(list(model_dir.glob('*.safetensors')))} safetensors shards, {du(model_dir) / GiB:.2f} GiB, "
              f"written in {time.perf_counter() - t:.1f} s", flush=True)

        train_argv = ["--pretrained", model_dir, "--benchmark", "--plugin", "gemini", "--mixed_precision", "bf16",
                      "--batch_size", 1, "--max_length", a.seq, "--num_samples", 2 * a.steps, "--max_steps", a.steps,
                      "--save_interval", 0, "--save_dir", root / "ckpt", "--tensorboard_dir", logs]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               "--worker", reports, *train_argv]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t = time.perf_counter()
        proc = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stdout[-8000:])
            raise SystemExit(f"error: the 2-rank Gemini run failed (exit {proc.returncode}) after {wall:.0f} s")

        records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
        print(f"train.py --plugin gemini, 2 ranks, batch 1 x seq {a.seq} per rank, {a.steps} steps: {wall:.0f} s wall")
        for r in records:
            print(f"  step {r['step']}: loss {r['loss']:.4f}  step time {r['step_time']:.1f} s  "
                  f"{r['tokens_per_second']:.0f} tok/s")
        for f in sorted(reports.glob("rank-*.json")):
            rep = json.loads(f.read_text())
            rss, lay = rep["peak_rss_gb"], rep["gemini_layout"] or {}
            rank = rep["rank"]
            held = ""
            if lay:
                held = (f", holds {lay['working_numel_per_rank'][rank] / 1e6:.1f}M of {lay['param_numel'] / 1e6:.1f}M "
                        f"working + {lay['master_numel_per_rank'][rank] / 1e6:.1f}M fp32 master elements "
                        f"({lay['sharded_chunks']}/{lay['chunks']} chunks sharded, sizes {lay['chunk_sizes']})")
            print(f"rank {rank}: load {rep['load_s']:.1f} s, peak RSS {rss['after_load']:.2f} GiB after load / "
                  f"{rss['train']:.2f} GiB training / {rss['incl_save']:.2f} GiB incl. save "
                  f"(save {rss['save_s']:.1f} s){held}")
        ckpt = sorted((root / "ckpt").glob("step-*"))[-1]
        parts = {d.name: du(d) / GiB for d in sorted(ckpt.iterdir()) if d.is_dir()}
        print(f"checkpoint {ckpt.name}: {du(ckpt) / GiB:.2f} GiB (" +
              ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + ")")


if __name__ == "__main__":
    main()
