"""Fault injection for tests of crash safety and the bad-step guard, off unless asked for.

COLOSSAL_HAMMER_FAULTS="kill_mid_save@8,nan_loss@3" makes this process group die by SIGKILL halfway
through writing the step-8 checkpoint, and makes the loss of this process's 3rd step attempt NaN. Real signals, real files:
the tests then check what a user would find after such a crash.
"""

import os
import signal


def _faults() -> set:
    return {f.strip() for f in os.environ.get("COLOSSAL_HAMMER_FAULTS", "").split(",") if f.strip()}


def kill_if(name: str, step: int) -> None:
    if f"{name}@{step}" in _faults():
        os.killpg(os.getpgrp(), signal.SIGKILL)


def nan_loss(attempt: int) -> bool:
    return f"nan_loss@{attempt}" in _faults()
