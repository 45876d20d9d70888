"""A plan as text for people and as one JSON object for scripts."""

from __future__ import annotations

import shlex
from typing import List, Optional

from .memory import GiB, PARTS
from .search import Cluster, Plan


def command(plan: Plan, cluster: Cluster) -> str:
    launcher = ["colossalai", "run", "--nproc_per_node", str(min(cluster.gpus_per_node, cluster.world))]
    if cluster.nodes > 1:
        launcher += ["--hostfile", "hostfile"]
    return shlex.join(launcher + ["train.py"] + plan.cfg.train_flags())


def describe(cfg) -> str:
    """The layout flags of a configuration, short."""
    parts = [f"--plugin {cfg.plugin}"]
    if cfg.plugin == "3d":
        parts.append(f"--tp {cfg.tp} --pp {cfg.pp} --zero_stage {cfg.zero_stage}")
        if cfg.zero_cpu_offload:
            parts.append("--zero_cpu_offload")
        if cfg.enable_sequence_parallelism:
            parts.append(f"--enable_sequence_parallelism --sp_mode {cfg.sp_mode}" + (f" --sp {cfg.sp}" if cfg.sp > 1 else ""))
        if cfg.pp > 1:
            parts.append(f"--microbatch_size {cfg.microbatch_size}")
    parts.append(f"--batch_size {cfg.batch_size} --accumulation_steps {cfg.accumulation_steps}")
    if cfg.use_grad_checkpoint:
        parts.append("--use_grad_checkpoint")
    return " ".join(parts)


def to_dict(plan: Plan, cluster: Cluster, change: Optional[tuple] = None, found: Optional[List[Plan]] = None) -> dict:
    mem, time = plan.memory, plan.time
    out = {
        "fits": plan.fits,
        "why": plan.why or None,
        "device": cluster.device.name,
        "device_memory_gib": round(cluster.device.memory_gib, 2),
        "devices": cluster.world,
        "memory_gib": {k: round(v / GiB, 3) for k, v in mem.device.items()},
        "pipeline_stage": mem.stage,
        "host_memory_gib": {k: round(v / GiB, 3) for k, v in mem.host.items()},
        "host_memory_capacity_gib": round(cluster.host_gib, 1),
        "notes": mem.notes,
        "warnings": plan.warnings,
        "tokens_per_s_per_gpu": None, "step_time_s": None, "hours": None, "days": None,
        "command": command(plan, cluster),
    }
    if time:
        out.update(tokens_per_s_per_gpu=round(time.tokens_per_s_per_gpu, 1), step_time_s=round(time.step_s, 3),
                   hours=None if time.hours is None else round(time.hours, 2),
                   days=None if time.hours is None else round(time.hours / 24, 3),
                   flops_per_token=time.flops_per_token, mfu_assumed=time.mfu, mfu_effective=round(time.effective_mfu, 4),
                   pipeline_bubble=round(time.bubble, 4), tokens_per_step=time.tokens_per_step,
                   step_parts_s=dict(compute=round(time.compute_s, 3), data_parallel_comm=round(time.comm_s, 3),
                                     tensor_parallel_comm=round(time.tp_comm_s, 3),
                                     cpu_offload=round(time.offload_s, 3)))
    if change is not None:
        out["smallest_change"] = None if change[0] is None else {
            "flags": change[0], "memory_gib": round(change[1].memory.device["total"] / GiB, 3),
            "command": command(change[1], cluster)}
    if found is not None:
        out["search"] = [{"flags": describe(p.cfg), "memory_gib": round(p.memory.device["total"] / GiB, 3),
                          "tokens_per_s_per_gpu": p.time and round(p.time.tokens_per_s_per_gpu, 1),
                          "command": command(p, cluster)} for p in found]
    return out


def text(d: dict) -> str:
    cluster = (f"{d['devices']} CPU ranks sharing {d['device_memory_gib']} GiB of host memory" if d["device"] == "cpu"
               else f"{d['devices']} x {d['device']} ({d['device_memory_gib']} GiB each)")
    lines = [cluster] + [f"warning: {w}" for w in d["warnings"]] + ["",
             f"memory per device (GiB){'' if not d['pipeline_stage'] else ', pipeline stage ' + str(d['pipeline_stage'])}:"]
    for part in PARTS + ("total",):
        lines.append(f"  {part:<14} {d['memory_gib'][part]:>10.2f}")
    host = d["host_memory_gib"]
    lines.append(f"host memory per node (GiB): runtime {host['runtime']:.1f}, model load {host['model_load']:.1f}, "
                 f"offloaded {host['offload']:.1f}, peak {host['total']:.1f} of {d['host_memory_capacity_gib']}")
    lines += [f"  note: {n}" for n in d["notes"]]
    lines.append("")
    lines.append("FITS" if d["fits"] else f"DOES NOT FIT: {d['why']}")
    change = d.get("smallest_change", "absent")
    if change is None:
        lines.append("no change tried (checkpointing, ZeRO/offload, gemini, tp, smaller batch) makes it fit")
    elif change != "absent":
        lines.append(f"smallest change that fits: {' '.join(change['flags'])} ({change['memory_gib']:.2f} GiB per device)")
        lines.append(f"  {change['command']}")
    lines.append("")
    if d["tokens_per_s_per_gpu"] is None:
        lines.append("time: no peak TFLOPS for this device (give --peak_tflops)")
    else:
        parts = d["step_parts_s"]
        lines.append(f"throughput: {d['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU at MFU {d['mfu_assumed']:.2f} "
                     f"(effective {d['mfu_effective']:.3f}); step {d['step_time_s']:.2f} s for "
                     f"{d['tokens_per_step']:,.0f} tokens (compute {parts['compute']:.2f}, data-parallel traffic "
                     f"{parts['data_parallel_comm']:.2f}, tensor-parallel traffic {parts['tensor_parallel_comm']:.2f}, CPU offload {parts['cpu_offload']:.2f}; pipeline bubble "
                     f"{d['pipeline_bubble']:.1%})")
        if d["hours"] is not None:
            lines.append(f"duration: {d['hours']:,.1f} hours ({d['days']:.2f} days)")
    lines += ["", "command:", f"  {d['command']}"]
    if "search" in d:
        lines += ["", f"configurations that fit, fastest first ({len(d['search'])} shown):"]
        for row in d["search"]:
            speed = "" if row["tokens_per_s_per_gpu"] is None else f"{row['tokens_per_s_per_gpu']:>9,.0f} tok/s/GPU  "
            lines.append(f"  {speed}{row['memory_gib']:>7.1f} GiB  {row['flags']}")
    return "\n".join(lines)
