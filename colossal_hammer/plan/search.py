"""Evaluate a configuration on a cluster; find the smallest change that makes it fit; list all that fit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from . import memory, throughput
from .config import layout_problem
from .devices import Device
from .layout import layout_of
from .memory import GiB
from .shapes import Shape

LORA_PLUGINS = ("ddp", "zero2", "zero2_cpu")  # adapters.lora.check refuses the others
DEFAULT_HOST_GIB = 1024.0  # host memory of a GPU node when --host_memory_gb is not given


@dataclass
class Cluster:
    device: Device
    nodes: int
    gpus_per_node: int
    host_gib: float
    margin: float
    tokens: Optional[float] = None
    mfu: Optional[float] = None

    @property
    def world(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Plan:
    cfg: object
    memory: memory.Memory
    time: Optional[throughput.Time]
    fits: bool
    why: str  # what does not fit, or ""
    warnings: List[str] = field(default_factory=list)  # what runs but slower than the user may think


def cluster_of(cfg, device: Device) -> Cluster:
    host = cfg.host_memory_gb or (device.memory_gib if device.host_only else DEFAULT_HOST_GIB)
    return Cluster(device, cfg.nodes, cfg.gpus_per_node, host, cfg.fragmentation, cfg.tokens, cfg.mfu)


def shape_problem(cfg, shape: Shape) -> Optional[str]:
    if getattr(cfg, "lora_rank", 0) and cfg.plugin not in LORA_PLUGINS:
        return f"--lora_rank: LoRA runs on {', '.join(LORA_PLUGINS)} (adapters.lora), not --plugin {cfg.plugin}"
    if cfg.plugin == "3d":
        if shape.heads % cfg.tp or shape.kv_heads % cfg.tp:
            return (f"--tp {cfg.tp}: must divide the {shape.heads} attention heads and {shape.kv_heads} key/value "
                    "heads")
        if cfg.pp > shape.layers:
            return f"--pp {cfg.pp}: more stages than the model's {shape.layers} layers"
    return None


def evaluate(cfg, shape: Shape, cluster: Cluster) -> Plan:
    mem = memory.estimate(cfg, shape, cluster.device, cluster.world, cluster.gpus_per_node, cluster.margin)
    time = throughput.estimate(cfg, shape, cluster.device, cluster.world, cluster.gpus_per_node, cluster.tokens,
                               cluster.mfu)
    device_gib, host_gib = mem.device["total"] / GiB, mem.host["total"] / GiB
    if cluster.device.host_only:  # one memory: every rank's share and the host's own use
        need = device_gib * min(cluster.gpus_per_node, cluster.world) + host_gib
        why = "" if need <= cluster.device.memory_gib else (
            f"{need:.1f} GiB per node (ranks + host) > {cluster.device.memory_gib:.1f} GiB of host memory")
    elif device_gib > cluster.device.memory_gib:
        why = f"{device_gib:.1f} GiB per device > {cluster.device.memory_gib:.1f} GiB"
    elif host_gib > cluster.host_gib:
        why = f"{host_gib:.1f} GiB host memory per node > {cluster.host_gib:.0f} GiB"
    else:
        why = ""
    warnings = []
    if throughput.tp_spans_nodes(layout_of(cfg, cluster.world), cluster.gpus_per_node):
        warnings.append(throughput.tp_spans_nodes_warning(cfg, cluster.device, cluster.gpus_per_node))
    return Plan(cfg, mem, time, not why, why, warnings)


# ---- what to change when it does not fit, in the order tried ----------------------------------------------

def _checkpointing(cfg):
    if not cfg.use_grad_checkpoint:
        return "--use_grad_checkpoint", dict(use_grad_checkpoint=True)


def _more_zero(cfg):
    if cfg.plugin == "ddp":
        return "--plugin zero2", dict(plugin="zero2")
    if cfg.plugin == "zero2":
        return "--plugin zero2_cpu", dict(plugin="zero2_cpu")
    if cfg.plugin == "3d" and cfg.zero_stage < (1 if cfg.pp > 1 else 2):
        return f"--zero_stage {cfg.zero_stage + 1}", dict(zero_stage=cfg.zero_stage + 1)
    if cfg.plugin == "3d" and cfg.zero_stage and not cfg.zero_cpu_offload:
        return "--zero_cpu_offload", dict(zero_cpu_offload=True)


def _gemini(cfg):
    if not cfg.plugin.startswith("gemini") and cfg.mixed_precision != "fp32":
        return "--plugin gemini", dict(plugin="gemini", tp=1, pp=1, sp=1, zero_stage=0, zero_cpu_offload=False,
                                       enable_sequence_parallelism=False)


def _larger_tp(cfg, gpus_per_node: int = 8):
    if cfg.plugin != "3d":
        return "--plugin 3d --tp 2 --zero_stage 1", dict(plugin="3d", tp=2, zero_stage=1)
    if cfg.tp * 2 <= gpus_per_node:
        return f"--tp {cfg.tp * 2}", dict(tp=cfg.tp * 2)


def _smaller_batch(cfg):
    if cfg.pp > 1 and cfg.microbatch_size > 1:
        micro = cfg.microbatch_size // 2
        return f"--microbatch_size {micro}", dict(microbatch_size=micro)
    if cfg.pp == 1 and cfg.batch_size > 1:
        b, acc = cfg.batch_size // 2, cfg.accumulation_steps * 2
        return f"--batch_size {b} --accumulation_steps {acc}", dict(batch_size=b, accumulation_steps=acc)


CHANGES: Tuple[Callable, ...] = (_checkpointing, _more_zero, _gemini, _larger_tp, _smaller_batch)


def _apply(cfg, change, shape: Shape, cluster: Cluster):
    if change is _larger_tp:
        found = change(cfg, cluster.gpus_per_node)
    else:
        found = change(cfg)
    if not found:
        return None
    text, fields = found
    new = dataclasses.replace(cfg, **fields)
    if (new.plugin == "3d" and layout_problem(new, cluster.world)) or shape_problem(new, shape):
        return None
    return text, new


def smallest_change(cfg, shape: Shape, cluster: Cluster) -> Optional[Tuple[List[str], Plan]]:
    """One change, in CHANGES order, that makes `cfg` fit; else changes taken greedily, each one that
    lowers the device's memory kept, until it fits. None when nothing found fits."""
    for change in CHANGES:
        step = _apply(cfg, change, shape, cluster)
        if step:
            plan = evaluate(step[1], shape, cluster)
            if plan.fits:
                return [step[0]], plan
    taken, current = [], evaluate(cfg, shape, cluster)
    for _ in range(16):
        improved = False
        for change in CHANGES:
            step = _apply(current.cfg, change, shape, cluster)
            if not step:
                continue
            plan = evaluate(step[1], shape, cluster)
            if plan.memory.device["total"] < current.memory.device["total"] or plan.fits:
                taken.append(step[0])
                current, improved = plan, True
                if plan.fits:
                    return taken, plan
                break
        if not improved:
            return None
    return None


# ---- --search ----------------------------------------------------------------------------------------------

def _powers_of_two(limit: int) -> List[int]:
    return [2**i for i in range(limit.bit_length()) if 2**i <= limit]


def candidates(cfg, shape: Shape, cluster: Cluster):
    """Configurations that train on the same global batch (samples per optimizer step) as `cfg`."""
    world = cluster.world
    global_batch = cfg.batch_size * cfg.accumulation_steps * layout_of(cfg, world).dp
    base = dict(tp=1, pp=1, sp=1, zero_stage=0, zero_cpu_offload=False, enable_sequence_parallelism=False,
                sp_mode="split_gather", microbatch_size=1)
    half = cfg.mixed_precision != "fp32"
    for ckpt in (False, True):
        for plugin in ("ddp", "zero2", "zero2_cpu", "gemini"):
            if plugin in ("gemini",) and not half:
                continue
            for b in _powers_of_two(global_batch):
                if global_batch % (b * world) == 0:
                    yield dataclasses.replace(cfg, **base, plugin=plugin, use_grad_checkpoint=ckpt, batch_size=b,
                                              accumulation_steps=global_batch // (b * world))
        for tp in _powers_of_two(min(cluster.gpus_per_node, world)):
            for pp in _powers_of_two(min(world // tp, shape.layers)):
                dp = world // (tp * pp)
                if dp * tp * pp != world or global_batch % dp:
                    continue
                per_rank = global_batch // dp
                for zero in ((0, 1, 2) if pp == 1 else (0, 1)) if half else (0,):
                    for offload in ((False, True) if zero else (False,)):
                        for seq in ((False, True) if tp > 1 else (False,)):
                            for b in (_powers_of_two(per_rank) if pp == 1 else [per_rank]):
                                for micro in ((1,) if pp == 1 else [m for m in (1, 2, 4) if per_rank % m == 0
                                                                  and per_rank // m >= pp]):
                                    yield dataclasses.replace(cfg, **{
                                        **base, "plugin": "3d", "tp": tp, "pp": pp, "zero_stage": zero,
                                        "zero_cpu_offload": offload, "enable_sequence_parallelism": seq,
                                        "use_grad_checkpoint": ckpt, "batch_size": b, "microbatch_size": micro,
                                        "accumulation_steps": per_rank // b,
                                        "padding_mode": "max_length" if seq else cfg.padding_mode})


def search(cfg, shape: Shape, cluster: Cluster) -> List[Plan]:
    found = []
    for candidate in candidates(cfg, shape, cluster):
        if (candidate.plugin == "3d" and layout_problem(candidate, cluster.world)) or shape_problem(candidate, shape):
            continue
        plan = evaluate(candidate, shape, cluster)
        if plan.fits:
            found.append(plan)
    speed = (lambda p: p.time.tokens_per_s_per_gpu) if cluster.device.peak_tflops else (
        lambda p: -p.memory.device["total"])
    return sorted(found, key=speed, reverse=True)
