"""A torch implementation of Colossal-AI's CPU Adam kernel.

`CPUAdam` / `HybridAdam` call `CPUAdamLoader().load().CPUAdamOptimizer(...)`, a C++ extension that
colossalai 0.5.0 builds with CUDA flags (`-lcudart`) and ships without sources, so it cannot exist on a
CPU-only host. This class has the same constructor and `step` signature and the same update rule
(decoupled or L2 weight decay, optional bias correction, `div_scale` un-scaling the gradient, fp32
maths on fp16/bf16 parameters), so the optimizers above it run unchanged.
"""

import math

import torch


class TorchCPUAdamOptimizer:
    def __init__(self, lr, beta1, beta2, eps, weight_decay, adamw_mode):
        # The kernel keeps these as defaults but every step() call passes its own values.
        self.adamw_mode = bool(adamw_mode)

    @torch.no_grad()
    def step(
        self,
        step: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        bias_correction: bool,
        param: torch.Tensor,
        grad: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        div_scale: float = -1,
    ) -> None:
        p32 = param.float()
        g32 = grad.float()
        if div_scale > 0:
            g32 = g32 / div_scale
        if weight_decay > 0 and not self.adamw_mode:
            g32 = g32.add(p32, alpha=weight_decay)
        exp_avg.mul_(beta1).add_(g32.to(exp_avg.dtype), alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g32.to(exp_avg_sq.dtype), g32.to(exp_avg_sq.dtype), value=1 - beta2)
        bc1 = 1 - beta1**step if bias_correction else 1.0
        bc2 = 1 - beta2**step if bias_correction else 1.0
        denom = (exp_avg_sq.float().sqrt() / math.sqrt(bc2)).add_(eps)
        if weight_decay > 0 and self.adamw_mode:
            p32.mul_(1 - lr * weight_decay)
        p32.addcdiv_(exp_avg.float(), denom, value=-lr / bc1)
        if p32.data_ptr() != param.data_ptr():
            param.copy_(p32)

    # The C++ kernel has these too; CPUAdam calls only step(), the rest keep the interface whole.
    def update_state(self, lr, beta1, beta2, eps, weight_decay, adamw_mode=None):
        if adamw_mode is not None:
            self.adamw_mode = bool(adamw_mode)


class TorchCPUAdamModule:
    """Stands in for the loaded extension module: only `CPUAdamOptimizer` is looked up on it."""

    CPUAdamOptimizer = TorchCPUAdamOptimizer
