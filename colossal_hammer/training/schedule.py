"""Learning-rate schedules: linear warmup, then cosine or linear decay to a floor, constant, or
warmup-stable-decay (WSD: Hägele et al. 2024, arXiv:2405.18392; MiniCPM, arXiv:2404.06395).

`ScheduledLR` keeps the schedule's parameters in its state_dict beside the step counter, so a resumed run
continues exactly where it stopped, and a resume whose flags would move the learning rate at the step it
resumes (a cosine over more epochs, a WSD extended inside its decay, another --lr) is refused in one line
instead of jumping. Extending a WSD or constant run in its stable phase moves nothing, and is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch.distributed as dist
from torch.optim.lr_scheduler import LRScheduler

from ..errors import InputError


@dataclass(frozen=True)
class Schedule:
    """The factor of the peak lr at each step (0-based: factor(k) is the lr of the (k+1)-th optimizer step)."""
    kind: str
    warmup_steps: int
    horizon: int  # cosine, linear: their decay ends here; wsd: its decay ends here; constant: unused
    min_lr_ratio: float = 0.1
    decay_steps: int = 0  # wsd: the last decay_steps steps before the horizon decay
    decay_shape: str = "1-sqrt"
    flags: dict = dataclasses.field(default_factory=dict, compare=False)  # the flags it was made of (see load)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return 1.0
        if self.kind == "wsd":
            decay_start = self.horizon - self.decay_steps
            if step < decay_start:
                return 1.0
            return self._decayed(min(1.0, (step - decay_start + 1) / max(1, self.decay_steps)), self.decay_shape)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.horizon - self.warmup_steps))
        return self._decayed(progress, self.kind)

    def _decayed(self, progress: float, shape: str) -> float:
        """From 1 at progress 0 to min_lr_ratio at progress 1."""
        span = 1 - self.min_lr_ratio
        if shape == "cosine":
            return self.min_lr_ratio + span * 0.5 * (1 + math.cos(math.pi * progress))
        if shape == "1-sqrt":
            return 1 - span * math.sqrt(progress)
        return 1 - span * progress

    def describe(self) -> str:
        if self.kind == "constant":
            return f"constant after {self.warmup_steps} warmup steps"
        if self.kind == "wsd":
            return (f"wsd ({self.warmup_steps} warmup, {self.decay_shape} decay over the {self.decay_steps} steps "
                    f"before step {self.horizon}, to {self.min_lr_ratio:g} of --lr)")
        return (f"{self.kind} ({self.warmup_steps} warmup, decay to {self.min_lr_ratio:g} of --lr at step "
                f"{self.horizon})")


class ScheduledLR(LRScheduler):
    def __init__(self, optimizer, schedule: Schedule):
        self.schedule = schedule
        super().__init__(optimizer)

    def get_lr(self) -> list:
        factor = self.schedule.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedule")}
        state["schedule"] = dataclasses.asdict(self.schedule)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = {k: v for k, v in state_dict.items() if k not in ("schedule", "lr_lambdas")}  # lr_lambdas: LambdaLR's
        if "schedule" in state_dict:  # checkpoints from before this class held only the step counter
            saved = Schedule(**state_dict["schedule"])
            if saved != self.schedule and saved.flags == self.schedule.flags:
                # The same flags over another number of steps: the data-parallel size changed (the gathered
                # optimizer checkpoint allows it). The checkpoint's steps stay, or the lr would jump.
                if dist.is_initialized() and dist.get_rank() == 0:
                    print(f"warning: the schedule stays the checkpoint's, {saved.describe()}: this run's data-parallel "
                          f"size would give {self.schedule.describe()}", flush=True)
                self.schedule = saved
            self._check_continues(saved, state["base_lrs"], state["last_epoch"])
        state.pop("base_lrs", None)  # equal to this run's (checked), which a changed --lr must not be overwritten by
        self.__dict__.update(state)

    def _check_continues(self, saved: Schedule, saved_base_lrs: list, step: int) -> None:
        """Refuse a resume at whose step the learning rate would not be what the checkpoint's schedule gives."""
        was = [base * saved.factor(step) for base in saved_base_lrs]
        now = [base * self.schedule.factor(step) for base in self.base_lrs]
        if any(not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(was, now)):
            raise InputError(
                f"resuming at step {step}, the learning rate would jump from {was[0]:.6g} to {now[0]:.6g}: the "
                f"checkpoint's schedule is {saved.describe()}, this run's is {self.schedule.describe()}; resume "
                "with its --lr and schedule flags (a wsd or constant run may take a larger --max_steps in its stable "
                "phase), or start a new stage from its weights with --load_weights_only")


# What a schedule is made of besides the number of steps the data gives.
SCHEDULE_FLAGS = ("lr", "lr_schedule", "warmup_steps", "min_lr_ratio", "decay_fraction", "decay_shape", "max_steps",
                  "num_epochs")


def default_warmup_steps(total_steps: int) -> int:
    """Colossal-LLaMA's default: 2.5% of the optimizer steps."""
    return int(0.025 * total_steps)


def schedule_for(cfg, total_steps: int) -> Schedule:
    """The schedule of a run of `total_steps` optimizer steps (all epochs): cosine and linear decay over all of
    them, as Colossal-LLaMA's cosine does (--max_steps stops a run early without moving its decay); WSD decays
    before the run's last step (--max_steps when given), so a larger --max_steps extends its stable phase."""
    last_step = total_steps if cfg.max_steps is None else min(cfg.max_steps, total_steps)
    horizon = max(1, last_step if cfg.lr_schedule == "wsd" else total_steps)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup_steps(horizon)
    return Schedule(kind=cfg.lr_schedule, warmup_steps=max(0, min(warmup, horizon)), horizon=horizon,
                    min_lr_ratio=cfg.min_lr_ratio,
                    decay_steps=round(cfg.decay_fraction * horizon) if cfg.lr_schedule == "wsd" else 0,
                    decay_shape=cfg.decay_shape, flags={name: getattr(cfg, name) for name in SCHEDULE_FLAGS
                           if name != "max_steps" or cfg.lr_schedule == "wsd"})  # the others stop, not end, there


def build(cfg, optimizer, total_steps: int) -> ScheduledLR:
    return ScheduledLR(optimizer, schedule_for(cfg, total_steps))
