"""The fp16 dynamic loss scale: read for the step log, judged for the bad-step guard, kept in every checkpoint.

Under fp16 the optimizer multiplies the loss by a scale before backward and skips any step whose gradients
overflow, halving the scale (Colossal-AI's DynamicGradScaler halves on every `hysteresis`-th overflow, and
torch AMP's GradScaler, used by the ddp plugin, on each). Such a skip is how loss scaling finds its level,
common in the first steps of a large run, and not a sign that training went wrong: the loop counts it as a bad
step only when the scale is already at its floor. Neither Colossal-AI's optimizer checkpoints nor its
scaler's own state_dict hold the whole scaler state (the steps since the last overflow and growth are left
out), so it is saved here, in running_states.json, and a resumed run continues with the very same scale.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import step_guard


class LossScale:
    def __init__(self, optimizer):
        from colossalai.amp.naive_amp.mixed_precision_mixin import FP16MixedPrecisionMixin

        mixin = step_guard.mixin_of(optimizer)
        self._colossal = mixin.grad_scaler if isinstance(mixin, FP16MixedPrecisionMixin) else None
        torch_scaler = getattr(optimizer, "scaler", None)  # TorchAMPOptimizer (ddp fp16)
        self._torch = torch_scaler if torch_scaler is not None and torch_scaler.is_enabled() else None

    @property
    def active(self) -> bool:
        return self._colossal is not None or self._torch is not None

    def value(self) -> Optional[float]:
        if self._colossal is not None:
            return float(self._colossal.scale)
        if self._torch is not None:
            return float(self._torch.get_scale())
        return None

    def at_minimum(self) -> bool:
        """Is the scale at its floor, where an overflow is a real failure? Colossal-AI's floor (min_scale 1 in
        every plugin), and the same for torch AMP's scaler, which has none and would halve towards 0."""
        value = self.value()
        if value is None:
            return False
        floor = self._colossal._min_scale if self._colossal is not None else None
        return value <= (float(floor) if floor is not None else 1.0)

    def state_dict(self) -> dict:
        if self._colossal is not None:
            s = self._colossal
            return {"scale": float(s.scale), "growth_step": s._growth_step, "hysteresis_step": s._hysteresis_step}
        if self._torch is not None:
            return {"torch_amp": self._torch.state_dict()}
        return {}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return  # a checkpoint from a bf16/fp32 run, or from before the scale was saved: the scaler starts anew
        if self._colossal is not None and "scale" in state:
            s = self._colossal
            s._scale = torch.tensor([state["scale"]], dtype=torch.float, device=s._scale.device)
            s._growth_step, s._hysteresis_step = int(state["growth_step"]), int(state["hysteresis_step"])
        elif self._torch is not None and "torch_amp" in state:
            self._torch.load_state_dict(state["torch_amp"])
