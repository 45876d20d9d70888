"""Peak memory of `colossal_hammer.model.export` on a real-shape Llama checkpoint, against its largest shard.

Builds a checkpoint folder (step-N/modeling: config.json + bf16 safetensors shards + index, random
weights written shard by shard, never a whole model) in a temp dir, exports it in a child process and
reads that process's peak RSS (os.wait4's rusage). `runtime` is the peak of a child that only imports
the export and builds the model on the meta device, the floor any export pays. Target (issue 11):
export peak <= runtime + 1.2 x the largest input shard. `--old` also runs the export as it was before
streaming (a full fp32 model, then save_pretrained) for comparison.

Usage: python bench/export_memory.py [--sizes 350m 1.1b] [--shard_mb 200] [--dtypes bf16 fp32] [--old]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

REPO = Path(__file__).resolve().parents[1]

SHAPES = {  # real shapes, vocabulary 32,000 (Llama-2's)
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16),
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4),  # TinyLlama's
}

RUNTIME = """
import torch
from transformers import AutoConfig, AutoModelForCausalLM
import colossal_hammer.model.export
with torch.device("meta"):
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({modeling!r}))
"""

OLD_EXPORT = """
import glob, torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM
state = {{}}
for path in sorted(glob.glob({modeling!r} + "/*.safetensors")):
    state.update(load_file(path))
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({modeling!r}), torch_dtype=torch.float32)
model.load_state_dict(state, strict=False)
model.to({dtype}).save_pretrained({out!r})
"""


def write_checkpoint(size: str, root: Path, shard_bytes: int) -> Path:
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, torch_dtype="bfloat16", **SHAPES[size])
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    modeling = root / "step-1" / "modeling"
    modeling.mkdir(parents=True)
    config.save_pretrained(modeling)
    groups, size_now = [[]], 0
    for key, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * 2
        if groups[-1] and size_now + nbytes > shard_bytes:
            groups.append([])
            size_now = 0
        groups[-1].append(key)
        size_now += nbytes
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: (torch.randn(shapes[k], generator=generator) * 0.02).to(torch.bfloat16) for k in keys},
                  modeling / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in keys})
    (modeling / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return modeling


# A child's ru_maxrss counts the pages it shared with its parent before exec: measured from this
# process (torch loaded, random weights made) every figure would start at our own size. So a bare
# python without torch starts the measured command and reports its child's rusage.
MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
sys.stderr.write(proc.stderr.read().decode()[-3000:])
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def peak_rss(cmd) -> tuple:
    """(peak RSS in bytes, seconds) of one child process; fails loudly if it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    code, peak = map(int, proc.stdout.split())
    if code != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stderr}")
    return peak, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["350m"], choices=sorted(SHAPES))
    p.add_argument("--shard_mb", type=int, default=200, help="Input shard size (10^6 bytes), bf16")
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    p.add_argument("--old", action="store_true", help="Also measure the pre-streaming export")
    args = p.parse_args(argv)
    gb = 1e9
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="export_memory-") as tmp:
            modeling = write_checkpoint(size, Path(tmp), args.shard_mb * 10**6)
            shards = sorted(modeling.glob("*.safetensors"))
            largest, total = max(f.stat().st_size for f in shards), sum(f.stat().st_size for f in shards)
            params = total / 2
            runtime, _ = peak_rss([sys.executable, "-c", RUNTIME.format(modeling=str(modeling))])
            print(f"{size}: {params / 1e6:.0f}M params, {len(shards)} bf16 shards, largest {largest / gb:.2f} GB, "
                  f"total {total / gb:.2f} GB; runtime (imports + meta model) {runtime / gb:.2f} GB", flush=True)
            for dtype in args.dtypes:
                out = Path(tmp) / f"hf-{dtype}"
                peak, seconds = peak_rss([sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint",
                                          str(modeling.parent), "--output_dir", str(out), "--dtype", dtype])
                ratio = (peak - runtime) / largest
                verdict = "within" if peak <= runtime + 1.2 * largest else "ABOVE"
                print(f"  export --dtype {dtype}: peak RSS {peak / gb:.2f} GB = runtime + {(peak - runtime) / gb:.2f} GB "
                      f"= runtime + {ratio:.2f} x largest shard ({verdict} the 1.2x target); "
                      f"{(peak - runtime) / params:.2f} bytes/param above runtime; {seconds:.0f} s", flush=True)
                if args.old:
                    torch_dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}[dtype]
                    old_peak, old_seconds = peak_rss([sys.executable, "-c", OLD_EXPORT.format(
                        modeling=str(modeling), dtype=torch_dtype, out=str(Path(tmp) / f"old-{dtype}"))])
                    print(f"  old export --dtype {dtype}: peak RSS {old_peak / gb:.2f} GB "
                          f"({old_peak / params:.2f} bytes/param); {old_seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
