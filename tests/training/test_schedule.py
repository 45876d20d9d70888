"""Learning-rate schedules: their shapes, a state that resumes exactly, resumes that would make the learning
rate jump refused, and, through train.py, the WSD trace and a constant run extended on resume."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from colossal_hammer.errors import InputError
from colossal_hammer.training.schedule import Schedule, ScheduledLR, build
from tests.distributed import TINY, launch, train


def config(**kw):
    base = dict(lr=1.0, num_epochs=1, lr_schedule="cosine", warmup_steps=None, min_lr_ratio=0.1, decay_fraction=0.2,
                decay_shape="1-sqrt", max_steps=None)
    return SimpleNamespace(**{**base, **kw})


def scheduler(lr=1.0, **kw):
    total_steps = kw.pop("total_steps", 100)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    kw["lr"] = lr
    return build(config(**kw), optimizer, total_steps)


def trace(sched, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return lrs


def test_cosine_keeps_the_schedule_it_had():
    """The formula of the cosine before there were other schedules (commit c1a7353), warmup default included."""
    def before(step, total=100, warmup=2):
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    assert trace(scheduler(max_steps=10), 100) == [before(k) for k in range(100)]  # max_steps moves nothing


@pytest.mark.parametrize("shape", ["1-sqrt", "linear", "cosine"])
def test_wsd_warms_stays_then_decays_to_the_floor(shape):
    lrs = trace(scheduler(lr=0.5, lr_schedule="wsd", warmup_steps=2, max_steps=10, decay_shape=shape), 10)
    assert lrs[:2] == [0.5 / 3, 1.0 / 3] and lrs[2:8] == [0.5] * 6
    assert 0.5 > lrs[8] > lrs[9] and lrs[9] == pytest.approx(0.05)


def test_linear_and_constant():
    assert trace(scheduler(lr_schedule="linear", warmup_steps=0, total_steps=11, min_lr_ratio=0.0), 11) == \
        pytest.approx([1 - k / 11 for k in range(11)])  # as the cosine: the floor after the last step
    assert trace(scheduler(lr_schedule="constant", warmup_steps=1, total_steps=5), 5) == [0.5, 1, 1, 1, 1]


def resumed(saved, **kw):
    """A fresh scheduler of this run's flags that loads `saved`'s state through JSON (as checkpoints hold it)."""
    sched = scheduler(**kw)
    sched.load_state_dict(json.loads(json.dumps(saved.state_dict())))
    return sched


def test_state_resumes_exactly_and_a_stable_phase_extends():
    flags = dict(lr_schedule="wsd", warmup_steps=2, max_steps=10)
    straight = trace(scheduler(**flags), 10)
    first = scheduler(**flags)
    trace(first, 5)
    assert trace(resumed(first, **flags), 5) == straight[5:]
    longer = trace(resumed(first, **{**flags, "max_steps": 20}), 15)  # decays over steps 17-20 now, not 9-10
    assert longer[:11] == [1.0] * 11 and longer[11] < 1.0


@pytest.mark.parametrize("saved_flags, steps, flags", [
    (dict(lr_schedule="wsd", warmup_steps=2, max_steps=10), 9, dict(lr_schedule="wsd", warmup_steps=2, max_steps=20)),
    (dict(lr_schedule="cosine", warmup_steps=2), 5, dict(lr_schedule="cosine", warmup_steps=2, num_epochs=2,
                                                         total_steps=200)),
    (dict(lr_schedule="constant", warmup_steps=2), 5, dict(lr_schedule="constant", warmup_steps=2, lr=2.0)),
])
def test_a_resume_that_would_jump_is_refused(saved_flags, steps, flags):
    saved = scheduler(**saved_flags)
    trace(saved, steps)
    with pytest.raises(InputError, match=f"resuming at step {steps}, the learning rate would jump"):
        resumed(saved, **flags)


def test_the_same_flags_over_another_number_of_steps_keep_the_checkpoints_schedule():
    """A gathered checkpoint resumed by another number of processes: the epoch has other steps, the lr stays."""
    saved = scheduler(lr_schedule="cosine", warmup_steps=2)
    trace(saved, 5)
    sched = resumed(saved, lr_schedule="cosine", warmup_steps=2, total_steps=200)
    assert sched.schedule == saved.schedule and trace(sched, 95) == trace(saved, 95)


def test_a_checkpoint_of_the_cosine_before_this_module_resumes():
    """Its state was a LambdaLR's: the step counter and no schedule."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    old = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    for _ in range(3):
        optimizer.step()
        old.step()
    sched = scheduler()
    sched.load_state_dict(json.loads(json.dumps(old.state_dict())))
    assert sched.last_epoch == 3 and trace(sched, 1)[0] == 1.0


def metrics(log_dir):
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def test_wsd_lr_trace_in_metrics_and_no_extension_once_decayed(tmp_path):
    flags = TINY + ["--plugin", "ddp", "--num_samples", "64", "--lr", "1e-3", "--lr_schedule", "wsd", "--warmup_steps",
                    "2", "--decay_fraction", "0.2", "--min_lr_ratio", "0.1", "--save_dir", tmp_path / "ckpt"]
    run = train(flags + ["--max_steps", "10"], tmp_path / "logs", nproc=1)
    lrs = [r["lr"] for r in run["records"]]
    assert [r["step"] for r in run["records"]] == list(range(1, 11))
    assert lrs[0] < lrs[1] < 1e-3 and lrs[2:8] == pytest.approx([1e-3] * 6, rel=1e-12)
    assert 1e-3 > lrs[8] > lrs[9] >= 1e-4 * (1 - 1e-12)
    refused = launch(flags + ["--max_steps", "20", "--resume", "auto"], tmp_path / "logs2", nproc=1)
    assert refused.returncode == 2, refused.stdout[-3000:]
    errors = [line for line in refused.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "resuming at step 10, the learning rate would jump from" in errors[0]
    assert "Traceback" not in refused.stdout


def test_constant_run_resumed_with_more_steps_equals_an_uninterrupted_one(tmp_path):
    flags = TINY + ["--plugin", "ddp", "--mixed_precision", "fp32", "--lr_schedule", "constant", "--warmup_steps", "2",
                    "--num_samples", "64", "--batch_size", "1"]
    straight = train(flags + ["--max_steps", "8"], tmp_path / "a", nproc=1)
    train(flags + ["--max_steps", "5", "--save_dir", tmp_path / "ckpt"], tmp_path / "b", nproc=1)
    extended = train(flags + ["--max_steps", "8", "--save_dir", tmp_path / "ckpt", "--resume", "auto"], tmp_path / "b2",
                     nproc=1)
    assert extended["info"]["start_step"] == 5
    assert extended["losses"] == straight["losses"][5:]  # bit-identical
    assert [r["lr"] for r in extended["records"]] == [r["lr"] for r in straight["records"]][5:]
