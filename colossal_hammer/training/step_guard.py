"""Skip a step whose loss or gradients are not finite, the same way on every rank and every plugin.

Each Colossal-AI optimizer already has a skip branch, taken when its mixed-precision mixin reports an
overflow: LowLevelZero (zero2, 3d with ZeRO) clears its gradient stores, Gemini also clears its recorded
norm and rewrites its fp16 chunks, the hybrid AMP optimizer zeroes its working gradients, and an fp16
mixin backs off its loss scale. Calling only `zero_grad()` misses part of that (a Gemini run then dies
at the next backward), and bf16 mixins never report an overflow at all. So the loop decides once, from
the loss and from each rank's own gradients, agreed across all ranks, and then takes the optimizer's own
branch by making its mixin answer "skip" for that one `step()`.
"""

from __future__ import annotations

from typing import Optional

import torch

MIXIN_ATTRIBUTES = ("mixed_precision_mixin", "mix_precision_mixin", "mixed_precision")


def mixin_of(optimizer):
    for name in MIXIN_ATTRIBUTES:
        mixin = getattr(optimizer, name, None)
        if mixin is not None and hasattr(mixin, "should_skip_step"):
            return mixin
    return None


def local_grads_finite(model, optimizer) -> torch.Tensor:
    """A 0-d bool tensor: are this rank's gradients finite? Read where the plugin keeps them, without a host sync."""
    if hasattr(optimizer, "pg_to_grad_store"):  # LowLevelZero and hybrid ZeRO: reduced gradients live in stores
        grads = [g for store in optimizer.pg_to_grad_store.values() for group in range(optimizer.num_param_groups)
                 for g in store.get_working_grads_by_group_id(group) if g is not None]
    elif hasattr(optimizer, "chunk_manager"):  # Gemini counts non-finite gradient chunks as it reduces them
        return optimizer.chunk_manager.overflow_counter.reshape(()) == 0
    else:  # DDP and hybrid without ZeRO: the working parameters' .grad
        grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(g).all() for g in grads]).all()


def local_weights_finite(model, optimizer) -> torch.Tensor:
    """A 0-d bool tensor: are the weights this rank holds finite? Gemini keeps them in chunks (its parameters'
    own tensors are empty stand-ins between steps), every other plugin in the parameters."""
    manager = getattr(optimizer, "chunk_manager", None)
    if manager is not None:
        tensors = [chunk.payload for group in manager.chunk_groups.values() for chunk in group]
    else:
        tensors = [p for p in model.parameters() if p.numel()]
    if not tensors:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def _end_of_step(optimizer) -> None:
    """Two things Gemini's skip branch leaves behind, reset once per step: the counter of non-finite gradient
    chunks (only its fp16 mixin resets it, so under bf16 one bad step would flag every later one), and
    gradient accumulation mode (only a real step ends it, so after a skip the next micro-batch would add to
    the bad gradients)."""
    manager = getattr(optimizer, "chunk_manager", None)
    if manager is not None:
        manager.overflow_counter.zero_()
        manager.accumulating_grads = False


def skip_step(optimizer) -> None:
    """Leave the optimizer exactly as its own overflow branch would (gradients cleared, loss scale backed off)."""
    try:
        _skip_step(optimizer)
    finally:
        _end_of_step(optimizer)


def _skip_step(optimizer) -> None:
    mixin = mixin_of(optimizer)
    if mixin is not None:
        from colossalai.amp.naive_amp.mixed_precision_mixin import FP16MixedPrecisionMixin

        def forced() -> bool:
            if isinstance(mixin, FP16MixedPrecisionMixin):
                type(mixin).should_skip_step(mixin)  # its scaler backs off; every rank calls it, so its all_reduce matches
            return True

        mixin.should_skip_step = forced
        try:
            optimizer.step()
        finally:
            del mixin.should_skip_step
        return
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None:  # torch AMP (ddp fp16): the scaler skips a step with inf gradients and backs off itself
        optimizer.step()
    optimizer.zero_grad()


def step_and_report(optimizer) -> bool:
    """optimizer.step(); False if the optimizer skipped it on its own (an fp16 overflow the loop did not see)."""
    scaler = getattr(optimizer, "scaler", None)
    scale_before: Optional[float] = float(scaler.get_scale()) if scaler is not None else None
    optimizer.step()
    _end_of_step(optimizer)
    mixin = mixin_of(optimizer)
    found = getattr(mixin, "found_overflow", None)
    if found is not None and float(found) > 0:
        return False
    if scale_before is not None and float(scaler.get_scale()) < scale_before:
        return False
    return True
