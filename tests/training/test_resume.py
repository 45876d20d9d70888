"""A run SIGKILLed mid-checkpoint resumes from the last complete one and is indistinguishable from a
run that never stopped: per-step losses bit-identical, with gradient accumulation on."""

import json

import pytest

from tests.distributed import TINY, launch, train

COMMON = TINY + ["--num_samples", "64", "--max_length", "32", "--batch_size", "1", "--accumulation_steps", "2",
                 "--max_steps", "8", "--save_interval", "4"]


def losses(log_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines())}


# zero2's SIGKILL resume also runs by default in test_plugin_matrix.py (with masked SFT rows)
@pytest.mark.parametrize("plugin, precision", [("ddp", "fp32"), pytest.param("zero2", "bf16", marks=pytest.mark.slow)])
def test_sigkill_mid_save_then_resume_auto_is_exact(plugin, precision, tmp_path):
    flags = COMMON + ["--plugin", plugin, "--mixed_precision", precision]
    straight = train(flags + ["--save_dir", tmp_path / "a" / "ckpt"], tmp_path / "a" / "logs")
    save_dir = tmp_path / "b" / "ckpt"
    crashed = launch(flags + ["--save_dir", save_dir], tmp_path / "b" / "logs",
                     env={"COLOSSAL_HAMMER_FAULTS": "kill_mid_save@8"})
    assert crashed.returncode != 0
    # the interrupted save left only a temporary folder; the previous checkpoint is whole
    assert (save_dir / ".tmp-step-8").is_dir() and not (save_dir / "step-8").exists()
    assert (save_dir / "step-4" / "running_states.json").is_file()
    resumed = train(flags + ["--save_dir", save_dir, "--resume", "auto"], tmp_path / "b" / "logs2")
    assert resumed["info"]["resumed_from"] == str(save_dir / "step-4") and resumed["info"]["start_step"] == 4
    a, b = losses(tmp_path / "a" / "logs"), losses(tmp_path / "b" / "logs2")
    assert sorted(b) == [5, 6, 7, 8]
    assert [b[s] for s in range(5, 9)] == [a[s] for s in range(5, 9)]  # bit-identical, not approximately
    assert (save_dir / "step-8" / "running_states.json").is_file()
    assert straight["info"]["start_step"] == 0


def test_resume_auto_without_checkpoint_starts_fresh_and_keep_last_prunes(tmp_path):
    run = train(TINY + ["--num_samples", "64", "--plugin", "ddp", "--max_steps", "6", "--save_interval", "2", "--keep_last", "2",
                        "--save_dir", tmp_path / "ckpt", "--resume", "auto"], tmp_path / "logs")
    assert run["info"]["resumed_from"] is None
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [".run.lock", "step-4", "step-6"]  # + the run lock


def test_nan_loss_steps_are_skipped_then_the_run_stops_with_a_checkpoint(tmp_path):
    flags = TINY + ["--num_samples", "64", "--plugin", "ddp", "--max_steps", "8", "--save_interval", "0",
                    "--max_bad_steps", "2"]
    one_bad = train(flags + ["--save_dir", tmp_path / "ckpt1"], tmp_path / "one",
                    env={"COLOSSAL_HAMMER_FAULTS": "nan_loss@3"})
    records = one_bad["records"]
    assert [r["skipped"] for r in records].count(True) == 1 and records[2]["skipped"]
    assert [r["step"] for r in records if not r["skipped"]] == list(range(1, 9))
    proc = launch(flags + ["--save_dir", tmp_path / "ckpt2"], tmp_path / "two",
                  env={"COLOSSAL_HAMMER_FAULTS": "nan_loss@3,nan_loss@4"})
    assert proc.returncode != 0
    assert "2 steps in a row had a NaN/inf loss or gradient; stopped" in proc.stdout
    assert (tmp_path / "ckpt2" / "step-2" / "running_states.json").is_file()


def test_gathered_optimizer_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    """--optimizer_checkpoint gathered: the Booster's files, which a 1-process run takes from a 2-process one
    (the per-rank default is refused there: tests/training/test_plugin_matrix.py)."""
    flags = COMMON + ["--plugin", "zero2", "--mixed_precision", "bf16", "--optimizer_checkpoint", "gathered",
                      "--max_steps", "4"]
    train(flags + ["--save_dir", tmp_path / "a"], tmp_path / "a" / "logs")
    assert any(p.name.startswith("pytorch_optim") for p in (tmp_path / "a" / "step-4" / "optimizer").iterdir())
    resumed = train(flags + ["--max_steps", "6", "--load_checkpoint", tmp_path / "a" / "step-4",
                             "--save_dir", tmp_path / "b"], tmp_path / "b" / "logs", nproc=1)
    assert resumed["info"]["start_step"] == 4 and "data-parallel size 2 -> 1" in resumed["output"]
    assert "warning: the schedule stays the checkpoint's" in resumed["output"]  # the lr does not jump
    assert sorted(losses(tmp_path / "b" / "logs")) == [5, 6]
