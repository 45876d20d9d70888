"""`python -m colossal_hammer.plan` and `train.py --plan`: same flags, printed plan, nothing started."""

import json
import os
import subprocess
import sys

from tests.distributed import REPO

SMALL = ["--model_config", "small", "--gpu", "cpu", "--gpus_per_node", "2", "--plugin", "zero2", "--max_length", "256"]


def run(argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_train_py_plan_prints_and_exits_without_training(tmp_path):
    proc = run([str(REPO / "train.py"), "--plan", *SMALL, "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fits"] is True and out["memory_gib"]["total"] > 0
    assert set(out) >= {"fits", "memory_gib", "host_memory_gib", "tokens_per_s_per_gpu", "hours", "command"}
    assert out["command"].startswith("colossalai run --nproc_per_node 2 train.py --model_config small")
    assert os.listdir(tmp_path) == []  # no checkpoint_dir, no logs: train.py's run never started
    direct = run(["-m", "colossal_hammer.plan", *SMALL, "--json"], tmp_path)
    assert json.loads(direct.stdout) == out


def test_text_report_and_a_bad_flag(tmp_path):
    proc = run(["-m", "colossal_hammer.plan", *SMALL, "--peak_tflops", "1", "--tokens", "1e6"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "FITS" in proc.stdout and "tokens/s/GPU" in proc.stdout and "duration:" in proc.stdout
    bad = run(["-m", "colossal_hammer.plan", *SMALL, "--plugin", "3d", "--pp", "2", "--zero_stage", "2"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: --pp with --zero_stage 2: Colossal-AI allows ZeRO 0 or 1 with pipeline parallelism"]
    missing = run(["-m", "colossal_hammer.plan", "--pretrained", str(tmp_path / "nope"), "--gpu", "a100-80g"],
                  tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: --pretrained") and "Traceback" not in missing.stderr


def test_moe_runs_are_refused_in_one_line(tmp_path):
    """The memory and time models count dense models: an MoE model or plugin gets one line, not a wrong plan."""
    for flags, start in ((["--model_config", "tiny_moe", "--plugin", "zero2"], "error: --model_config tiny_moe: "),
                         (["--model_config", "tiny_moe", "--plugin", "moe", "--ep", "2"], "error: --plugin moe: ")):
        proc = run(["-m", "colossal_hammer.plan", *flags, "--gpu", "h100-80g"], tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(start), proc.stderr
        assert "mixture-of-experts" in lines[0]
