"""Time of a run: model FLOPs over the peak at an assumed utilisation, a pipeline bubble, and what a
utilisation cannot hide: the data-parallel gradient traffic (overlapped: a floor), tensor-parallel
activations traffic and the host-side Adam step of CPU offload (added).

FLOPs per token are what train.py's MFU logging counts (training.metrics.training_flops): 6N for the
matmuls plus 12 * layers * hidden * s for attention over a full s x s block. Full recomputation runs the
forward twice (8N instead of 6N), so it costs 4/3 of the time at the same kernel utilisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .devices import HOST_MEMORY_GBS, Device
from ..rules import vocab_multiple
from .layout import Layout, layout_of
from .shapes import Shape

# Fraction of the dense peak the kernels reach without recomputation, per plugin. zero2: Colossal-LLaMA-2-7B's
# continual pretraining (64 x A800, 8.5B tokens in about 15 h with grad checkpointing: 0.38 MFU, 0.51 with
# the recomputed forward counted); 3d: Megatron-LM (Narayanan et al. 2021, 52% of A100 peak); the others
# have no published run under these settings and are set below zero2 for their extra traffic.
DEFAULT_MFU = {"ddp": 0.50, "zero2": 0.50, "zero2_cpu": 0.50, "gemini": 0.45, "gemini_auto": 0.45, "3d": 0.50}
INTERNODE_GBS = 25.0  # one 200 Gb/s InfiniBand port per GPU


@dataclass
class Time:
    flops_per_token: float
    mfu: float  # utilisation assumed (of peak, before recomputation and bubble)
    bubble: float
    tokens_per_step: float  # global
    compute_s: float
    comm_s: float
    tp_comm_s: float
    offload_s: float
    step_s: float
    tokens_per_s_per_gpu: float
    effective_mfu: float  # model FLOPs per second over peak, everything counted
    hours: Optional[float]


def tp_spans_nodes(lay: Layout, gpus_per_node: int) -> bool:
    """Whether some tensor-parallel group crosses a node boundary. HybridParallelPlugin's process-group mesh
    is (pp, dp, tp, sp): a tp group lies within tp*sp consecutive ranks, so it stays in one node only when
    that block divides the node's GPUs (tp > gpus_per_node is the usual case; tp 4 on nodes of 6 splits
    some groups too)."""
    return lay.tp > 1 and gpus_per_node % (lay.tp * lay.sp) != 0


def tp_link_gbs(device: Device) -> float:
    """What a tp group that spans nodes gets per GPU: the inter-node link, or the device's own if slower."""
    return min(device.link_gbs, INTERNODE_GBS)


def tp_spans_nodes_warning(cfg, device: Device, gpus_per_node: int) -> str:
    # A warning, not a refusal: train.py runs this layout (Colossal-AI accepts it), and nodes too small for the
    # model's tp may leave no other choice; what the user must know is that it is slow and why.
    slower = f", not {device.link_gbs:g} GB/s as within a node" if device.link_gbs > INTERNODE_GBS else ""
    return (f"--tp {cfg.tp} with --gpus_per_node {gpus_per_node}: the tensor-parallel group spans nodes, so its "
            f"all-reduces (every layer, on the critical path) run over the inter-node link at "
            f"{tp_link_gbs(device):g} GB/s{slower}; give a --tp that divides --gpus_per_node (and --pp for the "
            f"rest) unless memory leaves no other choice")


def flops_per_token(shape: Shape, seq: int, multiple: int = 1) -> float:
    return 6.0 * shape.total(multiple) + 12.0 * shape.layers * shape.hidden * seq


def estimate(cfg, shape: Shape, device: Device, world: int, gpus_per_node: int, tokens: Optional[float],
             mfu: Optional[float]) -> Optional[Time]:
    if not device.peak_tflops:
        return None
    lay = layout_of(cfg, world)
    mfu = mfu if mfu else DEFAULT_MFU[cfg.plugin]
    fpt = flops_per_token(shape, cfg.max_length, vocab_multiple(cfg))
    tokens_per_step = cfg.batch_size * cfg.accumulation_steps * lay.dp * cfg.max_length
    micro_batches = cfg.batch_size // cfg.microbatch_size if lay.pp > 1 else 1
    bubble = (lay.pp - 1) / (micro_batches + lay.pp - 1)
    recompute = 4.0 / 3.0 if cfg.use_grad_checkpoint else 1.0
    compute = tokens_per_step * fpt * recompute / (world * device.peak_tflops * 1e12 * mfu) / (1.0 - bubble)
    # Gradient (and for Gemini parameter) traffic per rank and step, ring algorithms, 16-bit.
    local = shape.total(vocab_multiple(cfg)) / (lay.tp * lay.pp)
    volume = (3.0 if cfg.plugin.startswith("gemini") else 2.0) * 2.0 * local * (lay.zero_group - 1) / lay.zero_group
    bandwidth = device.link_gbs if world <= gpus_per_node else min(device.link_gbs, INTERNODE_GBS)
    comm = volume / (bandwidth * 1e9)
    # Tensor parallelism: 4 all-reduces (or reduce-scatter + all-gather pairs) of s*b*h 16-bit values per layer
    # and micro-batch, forward and backward (6 with the recomputed forward), on the critical path.
    tp_comm = 0.0
    if lay.tp > 1:
        rank_tokens = cfg.batch_size * cfg.accumulation_steps * cfg.max_length / lay.sp
        per_token = shape.layers / lay.pp * (6 if cfg.use_grad_checkpoint else 4) * 2.0 * shape.hidden
        tp_link = tp_link_gbs(device) if tp_spans_nodes(lay, gpus_per_node) else device.link_gbs
        tp_comm = rank_tokens * per_token * 2.0 * (lay.tp - 1) / lay.tp / (tp_link * 1e9)
    offload = 0.0
    if cfg.plugin == "zero2_cpu" or (cfg.plugin == "3d" and cfg.zero_stage and cfg.zero_cpu_offload):
        shard = local / lay.zero_group
        # fp32 gradients down, 16-bit weights up, and CPU Adam reading/writing 36 bytes per element
        # with the node's ranks sharing its memory bandwidth.
        offload = shard * 6.0 / (device.pcie_gbs * 1e9) + shard * 36.0 * min(gpus_per_node, world) / (HOST_MEMORY_GBS * 1e9)
    step = max(compute, comm) + tp_comm + offload
    per_gpu = tokens_per_step / step / world
    hours = tokens / (per_gpu * world) / 3600.0 if tokens else None
    return Time(fpt, mfu, bubble, tokens_per_step, compute, comm, tp_comm, offload, step, per_gpu,
                per_gpu * fpt / (device.peak_tflops * 1e12), hours)
