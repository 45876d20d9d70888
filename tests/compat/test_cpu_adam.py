"""The torch CPU-Adam kernel follows torch's Adam/AdamW update, and HybridAdam runs on it."""

import os
import subprocess
import sys

import pytest
import torch

from colossal_hammer.compat.cpu_adam import TorchCPUAdamOptimizer
from tests.distributed import REPO


@pytest.mark.parametrize("adamw_mode", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_kernel_matches_torch_optimizer(adamw_mode, weight_decay):
    torch.manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(37, 5))
    mine = ref.detach().clone()
    exp_avg, exp_avg_sq = torch.zeros_like(mine), torch.zeros_like(mine)
    cls = torch.optim.AdamW if adamw_mode else torch.optim.Adam
    opt = cls([ref], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    kernel = TorchCPUAdamOptimizer(1e-2, 0.9, 0.95, 1e-8, weight_decay, adamw_mode)
    for step in range(1, 6):
        grad = torch.randn_like(mine)
        ref.grad = grad.clone()
        opt.step()
        # div_scale un-scales a loss-scaled gradient, as the C++ kernel does
        kernel.step(step, 1e-2, 0.9, 0.95, 1e-8, weight_decay, True, mine, grad * 8.0, exp_avg, exp_avg_sq, 8.0)
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-5, atol=1e-6)


def test_kernel_updates_half_precision_params_in_fp32():
    param = torch.ones(8, dtype=torch.bfloat16)
    exp_avg = torch.zeros(8)
    exp_avg_sq = torch.zeros(8)
    TorchCPUAdamOptimizer(0.1, 0.9, 0.999, 1e-8, 0.0, True).step(
        1, 0.1, 0.9, 0.999, 1e-8, 0.0, True, param, torch.ones(8, dtype=torch.bfloat16), exp_avg, exp_avg_sq)
    assert param.dtype == torch.bfloat16
    torch.testing.assert_close(param.float(), torch.full((8,), 0.9), rtol=0, atol=4e-3)


# In a process of its own: the compat layer patches Colossal-AI globally, which must not leak into other tests.
HYBRID_ADAM_VS_ADAMW = """
import torch
from colossal_hammer import compat

compat.activate()
from colossalai.nn.optimizer import HybridAdam

torch.manual_seed(0)
ref = torch.nn.Parameter(torch.randn(16, 4))
mine = torch.nn.Parameter(ref.detach().clone())
ours = HybridAdam([mine], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, adamw_mode=True)
theirs = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
for _ in range(3):
    g = torch.randn_like(ref)
    mine.grad, ref.grad = g.clone(), g.clone()
    ours.step()
    theirs.step()
torch.testing.assert_close(mine.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
print("matched")
"""


def test_hybrid_adam_runs_on_cpu_through_the_layer():
    proc = subprocess.run([sys.executable, "-c", HYBRID_ADAM_VS_ADAMW], cwd=REPO, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("matched"), proc.stdout[-3000:]

