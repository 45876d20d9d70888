"""Tokens/s of `train.py --plugin ddp` on CPU against a bare torch DDP loop. Prints figures, asserts nothing.

Both: 2 processes over gloo, Llama 4 layers x hidden 256 (config "small"), seq 256, batch 2 per rank,
fp32. The first WARMUP steps of each run are dropped; each loop runs --repeats times, interleaved with
the others so that a slow spell of a shared machine hits all of them, and the median step time over
all kept steps is reported. Target: our loop costs at most 10% over the bare one.

    python bench/train_overhead.py [--steps 20] [--repeats 3] [--batch 2] [--seq 256]
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


def bare_loop(a, env, out: Path):
    torchrun([REPO / "bench" / "bare_ddp_loop.py", a.steps, a.batch, a.seq, out], env)
    run = json.loads(out.read_text())
    return run["step_times"][WARMUP:], run["tokens_per_step"]


def our_loop(a, env, logs: Path, optimizer: str):
    torchrun([REPO / "train.py", "--plugin", "ddp", "--model_config", "small", "--benchmark",
              "--num_samples", a.steps * a.batch * 2, "--max_length", a.seq, "--batch_size", a.batch,
              "--mixed_precision", "fp32", "--optimizer", optimizer, "--tensorboard_dir", logs,
              "--save_dir", logs / "ckpt"], env)
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    return [r["step_time"] for r in records][WARMUP:], records[0]["tokens"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    loops = {
        "bare torch DDP + AdamW": lambda tmp, i: bare_loop(a, env, tmp / f"bare{i}.json"),
        "train.py --plugin ddp --optimizer adamw": lambda tmp, i: our_loop(a, env, tmp / f"adamw{i}", "adamw"),
        "train.py --plugin ddp --optimizer hybrid_adam": lambda tmp, i: our_loop(a, env, tmp / f"ha{i}", "hybrid_adam"),
    }
    times = {name: [] for name in loops}
    tokens = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for name, loop in loops.items():
                step_times, tokens[name] = loop(Path(tmp), i)
                times[name].extend(step_times)
    rows = [(name, tokens[name] / statistics.median(times[name])) for name in loops]
    bare_tps = rows[0][1]
    print(f"{'loop':48s} {'tokens/s':>10s} {'vs bare':>8s}")
    for name, tps in rows:
        print(f"{name:48s} {tps:10.0f} {tps / bare_tps:8.3f}")
    print(f"(2 procs, batch {a.batch}/rank, seq {a.seq}; {a.repeats} runs x {a.steps} steps each, "
          f"median step time after {WARMUP} warm-up steps per run)")


if __name__ == "__main__":
    main()
