#!/usr/bin/env python3
"""Planner vs measurement on this machine: train.py for a few steps under each plugin on 2 CPU ranks, every
rank's peak resident memory next to `python -m colossal_hammer.plan --gpu cpu` for the same flags.

    python bench/plan_vs_measured.py [--model_config small] [--plugins ddp zero2] [--max_length 1024]
                                     [--batch_size 4] [--steps 3]

On a CPU the planner's device is the host: a rank's prediction is its device total (parameters, gradients,
optimizer, activations, logits, runtime, margin), which is what its RSS holds. Bigger shapes (a ~350M and a
~1B Llama from sharded safetensors: --pretrained) are what the issue asks for; they take minutes and several
GiB per rank, so run them on a machine of your own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GiB = 1024**3


def worker(train_argv: list, report_dir: Path) -> None:
    """One rank: train.py's Trainer; peak RSS after import, after load, and before the final save."""
    import torch.distributed as dist

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux: KiB

    rss = {"import": peak()}
    from colossal_hammer.training.config import parse_config
    from colossal_hammer.training.loop import Trainer

    trainer = Trainer(parse_config(train_argv))
    rss["after_load"] = peak()
    save = trainer.save

    def measured_save():
        rss.setdefault("train", peak())
        return save()

    trainer.save = measured_save
    trainer.fit()
    rss.setdefault("train", peak())
    (report_dir / f"rank-{trainer.rank}.json").write_text(json.dumps(rss))
    dist.barrier()
    dist.destroy_process_group()


def predicted(train_argv: list) -> dict:
    from colossal_hammer.plan.cli import plan_dict

    return plan_dict([str(a) for a in train_argv] + ["--plan", "--gpu", "cpu", "--gpus_per_node", "2", "--json"])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[3:], Path(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_config", default="small")
    p.add_argument("--plugins", nargs="+", default=["ddp", "zero2"])
    p.add_argument("--max_length", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    rows = []
    for plugin in a.plugins:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "reports").mkdir()
            train_argv = ["--model_config", a.model_config, "--benchmark", "--plugin", plugin, "--mixed_precision",
                          "bf16", "--batch_size", a.batch_size, "--max_length", a.max_length, "--num_samples",
                          2 * a.batch_size * a.steps, "--max_steps", a.steps, "--save_interval", 0,
                          "--save_dir", root / "ckpt", "--tensorboard_dir", root / "logs"]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                   "--worker", root / "reports", *train_argv]
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            proc = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
            if proc.returncode != 0:
                print(proc.stdout[-6000:])
                raise SystemExit(f"error: {plugin}: train.py failed (exit {proc.returncode})")
            ranks = [json.loads((root / "reports" / f"rank-{r}.json").read_text()) for r in range(2)]
            plan = predicted(train_argv)
            rows.append((plugin, plan, ranks))
    print(f"{a.model_config}, 2 CPU ranks, bf16, batch {a.batch_size} x {a.max_length} tokens, {a.steps} steps")
    print("| plugin | predicted GiB/rank (parts) | measured peak RSS GiB/rank (import / load / train) | predicted/measured |")
    print("|---|---|---|---|")
    for plugin, plan, ranks in rows:
        m = plan["memory_gib"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "total" and v)
        measured = max(r["train"] for r in ranks)
        seen = "; ".join(f"{r['import']:.2f} / {r['after_load']:.2f} / {r['train']:.2f}" for r in ranks)
        print(f"| {plugin} | {m['total']:.2f} ({parts}) | {seen} | {m['total'] / measured:.2f} |")


if __name__ == "__main__":
    main()
