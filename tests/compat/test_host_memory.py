"""On a CPU host, tensors freed below a live one leave the process's resident memory (compat.host_memory).

Each case runs in a fresh interpreter: glibc's thresholds are process-wide and only grow."""

import json
import subprocess
import sys

import pytest

# A freed 16 MiB tensor raises glibc's dynamic mmap threshold to 16 MiB (it grows up to 32); 100 tensors of 4 MiB
# then come from the heap, a small tensor after them pins the heap's top, and all 100 are freed.
PATTERN = """
import json, sys, psutil, torch
if sys.argv[1] == "tuned":
    from colossal_hammer.compat import host_memory
    assert host_memory.return_freed_memory()
rss = lambda: psutil.Process().memory_info().rss / 2**20
big = torch.ones(4 * 2**20); del big
before = rss()
mid = [torch.ones(2**20) for _ in range(100)]
pin = torch.ones(1000)
held = rss()
del mid
print(json.dumps({"grown": held - before, "kept": rss() - before}))
"""


def run(mode: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, env=env,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]), check=True)
    return json.loads(out.stdout)


def test_freed_tensors_below_a_live_one_go_back_to_the_os():
    default, tuned = run("default"), run("tuned")
    assert default["grown"] > 350 and tuned["grown"] > 350  # 400 MiB were really allocated both times
    assert default["kept"] > 300, default  # glibc's default: the freed heap below `pin` stays resident
    assert tuned["kept"] < 50, tuned  # 1 MiB threshold: each 4 MiB tensor was its own mapping, unmapped on free


def test_a_users_own_malloc_setting_wins(monkeypatch):
    from colossal_hammer.compat import host_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert host_memory.return_freed_memory() is False
