"""`make demo` for now: a real 2-process ZeRO-2 training of a tiny Llama on CPU, and its loss curve.

The full quick start (extend a tokenizer, continue pretraining on Chinese, SFT, export) replaces this
once the data and tokenizer pieces land. Until then this shows the engine working end to end: two
processes over gloo (or NCCL on GPUs), the Booster plugin, TensorBoard logs, and a loss that falls as
the model memorises a small fixed set of random sequences over several epochs.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def ascii_curve(values, width=60, height=12) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    cols = [values[int(i * (len(values) - 1) / max(1, width - 1))] for i in range(min(width, len(values)))]
    rows = []
    for level in range(height, -1, -1):
        threshold = lo + span * level / height
        label = f"{threshold:7.3f} |" if level in (0, height // 2, height) else "        |"
        rows.append(label + "".join("*" if v >= threshold and v < threshold + span / height else " " for v in cols))
    rows.append("        +" + "-" * len(cols))
    rows.append(f"         step 1 .. {len(values)}")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="demo_output")
    p.add_argument("--plugin", default="zero2")
    p.add_argument("--epochs", type=int, default=12)
    a = p.parse_args()
    logs = Path(a.output_dir) / "logs"
    # metrics.jsonl appends across runs (resume keeps one history); a fresh demo starts a fresh curve.
    (logs / "metrics.jsonl").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), "--plugin", a.plugin, "--model_config", "tiny", "--benchmark",
           "--num_samples", "64", "--max_length", "64", "--batch_size", "4", "--num_epochs", str(a.epochs),
           "--lr", "3e-3", "--warmup_steps", "5", "--tensorboard_dir", str(logs)]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, check=True, env=env)
    losses = [json.loads(line)["loss"] for line in (logs / "metrics.jsonl").read_text().splitlines()]
    print("\nloss per optimizer step (2 processes, plugin %s):" % a.plugin)
    print(ascii_curve(losses))
    print(f"\nfirst {losses[0]:.4f}  last {losses[-1]:.4f}  steps {len(losses)}")
    print(f"TensorBoard: tensorboard --logdir {logs}")


if __name__ == "__main__":
    main()
