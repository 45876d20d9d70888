"""Tokens/s of `train.py --plugin ddp` on CPU against a bare torch DDP loop. Prints figures, asserts nothing.

Both: 2 processes over gloo, Llama 4 layers x hidden 256 (config "small"), seq 256, batch 2 per rank,
fp32. The first WARMUP steps of each are dropped. Target: our loop costs at most 10% over the bare one.

    python bench/train_overhead.py [--steps 12] [--batch 2] [--seq 256]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 2


def torchrun(args, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tokens_per_second(step_times, tokens_per_step):
    kept = step_times[WARMUP:]
    return tokens_per_step / statistics.median(kept)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    num_samples = a.steps * a.batch * 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bare_out = Path(tmp) / "bare.json"
        torchrun([REPO / "bench" / "bare_ddp_loop.py", a.steps, a.batch, a.seq, bare_out], env)
        bare = json.loads(bare_out.read_text())
        bare_tps = tokens_per_second(bare["step_times"], bare["tokens_per_step"])
        rows.append(("bare torch DDP + AdamW", bare_tps))
        for optimizer in ("adamw", "hybrid_adam"):
            logs = Path(tmp) / optimizer
            torchrun([REPO / "train.py", "--plugin", "ddp", "--model_config", "small", "--benchmark",
                      "--num_samples", num_samples, "--max_length", a.seq, "--batch_size", a.batch,
                      "--mixed_precision", "fp32", "--optimizer", optimizer, "--tensorboard_dir", logs], env)
            records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
            tps = tokens_per_second([r["step_time"] for r in records], records[0]["tokens"])
            rows.append((f"train.py --plugin ddp --optimizer {optimizer}", tps))
    print(f"{'loop':48s} {'tokens/s':>10s} {'vs bare':>8s}")
    for name, tps in rows:
        print(f"{name:48s} {tps:10.0f} {tps / bare_tps:8.3f}")
    print(f"(2 procs, batch {a.batch}/rank, seq {a.seq}, {a.steps} steps, median after {WARMUP} warm-up steps)")


if __name__ == "__main__":
    main()
