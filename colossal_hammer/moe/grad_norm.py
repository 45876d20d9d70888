"""The global gradient norm of a `--plugin moe` step, and clipping by it, computed here because Colossal-AI
0.5.0's own is wrong for this plugin (its loss and gradients are right; its norm, and so its clipping, are not):

- ZeRO-1 with expert parallelism (MoeHybridParallelZeroOptimizer): zero/low_level/low_level_optim.py adds the
  norms of its two gradient stores (non-expert, expert) as plain norms instead of their squares, and the
  expert store's squares are summed over the moe data-parallel group only, never over the expert-parallel
  ranks that hold the other experts: each rank clips by a norm of its own.
- tp > 1 without ZeRO: the plugin builds HybridParallelAMPOptimizer without its tp group
  (moe_hybrid_parallel_plugin.py), so the tensor-parallel shards' squares are never summed: the norm is low.

Measured against ddp fp32 on the same Mixtral (tests/moe/test_moe_training.py): 8.2e-2 (ep 2, ZeRO-1) and
1.8e-1 (tp 2) relative, with losses within 2e-4. So the plugin is built with max_norm 0, and each step the
loop takes this norm (every gradient element counted once over all ranks) and clips by it.
"""

from __future__ import annotations

import ctypes

import torch
import torch.distributed as dist


def _local_squares(model, optimizer, tp_size: int, dp_size: int, device) -> tuple[torch.Tensor, list]:
    """(this rank's share of the sum of squared gradients, on `device` and read by no one yet: no host sync per
    tensor; the gradient tensors to scale when clipping)."""
    from colossalai.tensor.d_tensor import is_distributed_tensor

    total = torch.zeros((), dtype=torch.float64, device=device)
    if hasattr(optimizer, "pg_to_grad_store"):
        # ZeRO: each rank holds disjoint, already averaged partitions: non-expert ones split over the data-parallel
        # ranks, expert ones over the moe data-parallel ranks, different experts on different expert-parallel ranks
        grads = [g for store in optimizer.pg_to_grad_store.values() for group in range(optimizer.num_param_groups)
                 for g in store.get_working_grads_by_group_id(group) if g is not None]
        for g in grads:
            square = g.detach().double().pow(2).sum().to(device)
            if tp_size > 1:  # a parameter that tp does not split is held whole by every tp rank
                param = ctypes.cast(optimizer.get_param_id_for_grad(g), ctypes.py_object).value
                square = square if is_distributed_tensor(param) else square / tp_size
            total += square
        return total, grads
    # no ZeRO (no expert parallelism either: refused on several data-parallel ranks): every data-parallel rank
    # holds the same averaged gradients, and tp ranks the same unsplit ones
    params = [p for p in model.parameters() if p.grad is not None]
    for p in params:
        share = dp_size * (1 if is_distributed_tensor(p) else tp_size)
        total += p.grad.detach().double().pow(2).sum().to(device) / share
    return total, [p.grad for p in params]


def norm_and_clip(model, optimizer, max_norm: float, tp_size: int, dp_size: int, device,
                  loss_scale: float = 1.0) -> float:
    """The step's global gradient norm (fp16: `loss_scale`, which the gradients still carry, removed); gradients
    scaled down in place to max_norm when they exceed it (max_norm 0: no clipping). `device`: where the
    process group's collectives run."""
    square, grads = _local_squares(model, optimizer, tp_size, dp_size, device)
    dist.all_reduce(square)
    norm = float(square.sqrt()) / loss_scale
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        with torch.no_grad():
            for g in grads:
                g.mul_(coef)
    return norm
