"""Fault injection for tests of crash safety and the bad-step guard, off unless asked for.

COLOSSAL_HAMMER_FAULTS="kill_mid_save@8,nan_loss@3,nan_grad@5,hang@2" makes this process group die by
SIGKILL halfway through writing the step-8 checkpoint, makes the loss of this process's 3rd step attempt NaN
(and so its gradients), gives the 5th attempt NaN gradients behind a finite loss, and makes the 2nd attempt
hang for an hour (a run that is still going, for the tests of what a second launch does meanwhile). Real signals, real
files, real NaNs through the plugin's backward: the tests then check what a user would find.
"""

import os
import signal
import time

import torch


def _faults() -> set:
    return {f.strip() for f in os.environ.get("COLOSSAL_HAMMER_FAULTS", "").split(",") if f.strip()}


def kill_if(name: str, step: int) -> None:
    if f"{name}@{step}" in _faults():
        os.killpg(os.getpgrp(), signal.SIGKILL)


def hang_if(name: str, attempt: int) -> None:
    if f"{name}@{attempt}" in _faults():
        time.sleep(3600)


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def corrupt_loss(loss: torch.Tensor, attempt: int) -> torch.Tensor:
    faults = _faults()
    if f"nan_loss@{attempt}" in faults:
        return loss * float("nan")
    if f"nan_grad@{attempt}" in faults:
        return _NaNGradient.apply(loss)
    return loss
