"""fp16 loss scaling: a step the scaler skips is its business, not a bad step; its state resumes exactly.

A large fp16 run typically overflows in its first steps while the dynamic scale finds its level. Here the
scale starts far too high: the run must back off, train on with `--max_bad_steps 1` (any step counted as bad
would stop it), log every skipped step with its scale, leave the learning-rate schedule where it was during
the skips, and resume after a SIGKILL mid-save with the same scale and bit-identical losses."""

import pytest

from tests.distributed import TINY, launch, train

COMMON = TINY + ["--num_samples", "128", "--max_length", "32", "--batch_size", "1", "--max_steps", "12",
                 "--save_interval", "6", "--mixed_precision", "fp16", "--max_bad_steps", "1", "--warmup_steps", "3"]
TOO_HIGH = 2.0 ** 32  # the ceiling; the tiny model's fp16 gradients overflow until it is far lower


@pytest.mark.parametrize("plugin", ["zero2", pytest.param("ddp", marks=pytest.mark.slow)])
def test_a_scale_far_too_high_backs_off_and_trains_on_then_resumes_exactly(plugin, tmp_path):
    flags = COMMON + ["--plugin", plugin, "--initial_loss_scale", str(TOO_HIGH)]
    straight = train(flags + ["--save_dir", tmp_path / "a"], tmp_path / "a-logs")
    records = straight["records"]
    overflows = [r for r in records if r["overflow"]]
    assert len(overflows) >= 4, [(r["loss_scale"], r["overflow"]) for r in records]
    assert all(r["skipped"] for r in overflows) and [r["step"] for r in records if not r["skipped"]] == list(range(1, 13))
    scales = [r["loss_scale"] for r in records]
    assert scales[0] == TOO_HIGH and scales == sorted(scales, reverse=True) and scales[-1] < TOO_HIGH
    # the schedule waits for the first real step: it starts the warmup then, not 3+ skipped steps earlier
    first = next(i for i, r in enumerate(records) if not r["skipped"])
    assert first >= 4 and all(r["lr"] == records[0]["lr"] for r in records[:first + 1])
    # the norm of the real gradients, not of the scaled ones Colossal-AI's optimizers record
    assert all(0.1 < r["grad_norm"] < 100 for r in records if not r["skipped"]), [r["grad_norm"] for r in records]
    assert "skipped by the loss scaler" in straight["output"]

    crashed = launch(flags + ["--save_dir", tmp_path / "b"], tmp_path / "b-logs",
                     env={"COLOSSAL_HAMMER_FAULTS": "kill_mid_save@12"})
    assert crashed.returncode != 0 and (tmp_path / "b" / "step-6").is_dir()
    resumed = train(flags + ["--save_dir", tmp_path / "b", "--resume", "auto"], tmp_path / "b-logs2")
    assert resumed["info"]["start_step"] == 6
    saved = next(i for i, r in enumerate(records) if r["step"] == 6 and not r["skipped"])
    figures = ("step", "loss", "loss_scale", "skipped")
    # bit-identical losses, and the scale each step ran at (the scaler's whole state came back)
    assert [[r[k] for k in figures] for r in resumed["records"]] == [[r[k] for k in figures] for r in records[saved + 1:]]


def test_an_overflow_at_the_scale_floor_is_a_bad_step(tmp_path):
    """At scale 1 the scaler cannot back off: an overflow there is a real failure, and the guard counts it."""
    flags = COMMON + ["--plugin", "zero2", "--initial_loss_scale", "1", "--save_dir", tmp_path / "ckpt"]
    proc = launch(flags, tmp_path / "logs", env={"COLOSSAL_HAMMER_FAULTS": "nan_grad@2"})
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "error: a step had a NaN/inf loss or gradient (--max_bad_steps 1); stopped" in proc.stdout
