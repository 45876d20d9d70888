"""Run train.py for real in several processes (gloo on CPU) and read back what it logged."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"

# Small enough to train 3 steps in seconds, big enough that plugins shard for real.
TINY = ["--model_config", "tiny", "--benchmark", "--num_samples", "16", "--max_length", "64", "--seed", "42"]


def launch(args, log_dir: Path, nproc: int = 2, timeout: int = 600, env: dict = None):
    """Start train.py under torchrun and wait. Returns the CompletedProcess (stdout+stderr merged).

    In a session of its own: injected faults SIGKILL their whole process group, which must not be ours."""
    # Each run its own save_dir unless the test gives one (a later --save_dir wins): a save_dir holding
    # another run's checkpoints is refused.
    # One process runs without a launcher (train.py sets up a world of one), as `python train.py` does for a user.
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(TRAIN), "--save_dir", str(log_dir) + "-ckpt", *map(str, args), "--tensorboard_dir", str(log_dir)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(cmd, cwd=log_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # the launcher and every rank: none is left running after the test
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def train(args, log_dir: Path, nproc: int = 2, env: dict = None) -> dict:
    """Run to completion (or fail the test with the output) and return losses, the step records, the eval
    records (--eval_dataset) and the plugin description."""
    proc = launch(args, log_dir, nproc=nproc, env=env)
    assert proc.returncode == 0, f"train.py failed ({proc.returncode}):\n{proc.stdout[-6000:]}"
    lines = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if r.get("kind") != "eval"]
    info = json.loads((log_dir / "run_info.json").read_text())
    return {"losses": [r["loss"] for r in records], "records": records, "info": info, "output": proc.stdout,
            "evals": [r for r in lines if r.get("kind") == "eval"]}



# bf16 gradients keep 8 bits of mantissa: their norms differ from fp32 ddp's by up to 5.4e-3 in the plugin matrix
# (the loss by 1.6e-4), still 100 times below what a gradient scaled by 2 gives (1.0).
GRAD_NORM_BF16 = 1e-2


def by_step(records, key="loss"):
    return {r["step"]: r[key] for r in records if not r["skipped"]}


def largest_difference(run, ref, key="loss"):
    """Largest relative difference of `key` (loss, grad_norm) between two runs' step records, over the steps
    both took. Parity tests compare the gradient norm as well as the loss: AdamW is invariant to the gradient's
    scale and clipping normalises it, so a plugin that scaled gradients wrongly would match on losses alone."""
    a, b = by_step(run, key), by_step(ref, key)
    assert sorted(a) == sorted(b) and all(math.isfinite(a[s]) for s in a), (key, a, b)
    return max(abs(a[s] - b[s]) / abs(b[s]) for s in a)
