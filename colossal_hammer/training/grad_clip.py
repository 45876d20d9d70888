"""Where the step's gradient norm is taken, and clipped by, for this run's plugin: chosen once.

Colossal-AI's ZeRO, Gemini and hybrid optimizers clip inside `step()` and report the norm after it; under
torch DDP (precision_plan's `clip_in_loop`) the loop clips through the booster's optimizer wrapper; under
`--plugin moe` the loop takes the norm itself (moe/grad_norm.py), because Colossal-AI's is wrong there and
the plugin is built with max_norm 0.
"""

from __future__ import annotations

from typing import Callable, Optional

from ..moe import grad_norm as moe_grad_norm
from . import step_guard


def clipper(cfg, plugin, layout, model, optimizer, device, clip_in_loop: bool) -> Callable[[], Optional[float]]:
    """A function run before the optimizer step: clips where the loop clips and returns the norm (None: the
    optimizer clips inside its step; read it afterwards with `norm_after_step`)."""
    from colossalai.interface import OptimizerWrapper

    if cfg.plugin == "moe":
        def moe_norm_and_clip():
            scale = float(getattr(step_guard.mixin_of(optimizer), "loss_scale", 1.0))
            return moe_grad_norm.norm_and_clip(model, optimizer, cfg.grad_clip, plugin.tp_size, layout.dp_size,
                                               device, scale)
        return moe_norm_and_clip
    if clip_in_loop and getattr(optimizer, "scaler", None) is not None:
        # ddp fp16 (torch AMP): its wrapper unscales and clips but drops the norm; the same two calls, kept
        def unscale_and_clip():
            optimizer.unscale_grad()
            return OptimizerWrapper.clip_grad_by_norm(optimizer, cfg.grad_clip)
        return unscale_and_clip
    if clip_in_loop:
        return lambda: optimizer.clip_grad_by_norm(cfg.grad_clip)
    return lambda: None


def norm_after_step(optimizer, loss_scale: Optional[float]) -> Optional[float]:
    """The norm an optimizer that clips inside `step()` recorded there (None: it records none). Colossal-AI's
    record the norm of the gradients still multiplied by the fp16 loss scale (their clipping divides it out):
    `loss_scale` is the scale of this step's backward, or None without one."""
    try:
        norm = optimizer.get_grad_norm()
    except NotImplementedError:
        return None
    return norm / loss_scale if norm is not None and loss_scale else norm
