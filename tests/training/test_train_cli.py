"""train.py as a user runs it: --help, and one-line errors for bad combinations (launchers: test_readme.py)."""

import os
import subprocess
import sys

import pytest

from tests.distributed import REPO, TINY, launch


def test_help_lists_every_flag():
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--plugin", "--tp", "--pp", "--sp", "--zero_stage", "--sp_mode", "--enable_sequence_parallelism",
                 "--zero_cpu_offload", "--microbatch_size", "--mixed_precision", "--grad_clip",
                 "--accumulation_steps", "--benchmark", "--num_samples", "--model_config", "--pretrained", "--task",
                 "--dpo_loss", "--beta", "--simpo_gamma", "--ep", "--router_aux_loss_coef", "--router_z_loss_coef"):
        assert flag in out.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--plugin", "gemini_auto"], "gemini_auto places chunks"),
        (["--plugin", "zero2", "--tp", "2"], "need --plugin 3d"),
        (["--plugin", "gemini", "--mixed_precision", "fp32"], "Gemini trains in fp16 or bf16 only"),
        (["--plugin", "3d", "--zero_stage", "1", "--mixed_precision", "fp32"], "--zero_stage > 0 trains in fp16"),
        (["--plugin", "zero2", "--mixed_precision", "fp16", "--initial_loss_scale", "0.5"],
         "--initial_loss_scale 0.5: must be from 1"),
    ],
)
def test_bad_combination_is_one_clear_line(flags, message, tmp_path):
    proc = launch(TINY + flags, tmp_path / "logs", nproc=1)
    assert proc.returncode != 0
    error_lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert error_lines and message in error_lines[0], proc.stdout[-3000:]


def test_missing_model_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--benchmark"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "give exactly one of --pretrained DIR, --model_config tiny|small|<json> or --load_weights_only DIR" \
        in proc.stderr
    both = subprocess.run([sys.executable, str(REPO / "train.py"), "--model_config", "tiny", "--benchmark",
                           "--dataset", str(tmp_path)], capture_output=True, text=True)
    assert both.returncode != 0 and "give --dataset DIR [DIR ...] or --benchmark" in both.stderr


def test_without_compat_layer_zero_fails_on_cpu(tmp_path):
    """The layer is what makes ZeRO run here: switched off, upstream's device assertion fires.

    (torch AdamW, so that the missing CPU-Adam kernel, the first thing to fail otherwise, is not what we see.)"""
    env_backup = os.environ.get("COLOSSAL_HAMMER_CPU_COMPAT")
    os.environ["COLOSSAL_HAMMER_CPU_COMPAT"] = "0"
    try:
        proc = launch(TINY + ["--plugin", "zero2", "--optimizer", "adamw", "--max_steps", "1"], tmp_path / "logs")
    finally:
        if env_backup is None:
            del os.environ["COLOSSAL_HAMMER_CPU_COMPAT"]
        else:
            os.environ["COLOSSAL_HAMMER_CPU_COMPAT"] = env_backup
    assert proc.returncode != 0
    assert "AssertionError: device is required" in proc.stdout
