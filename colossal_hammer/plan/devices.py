"""The devices a plan can target: memory, dense bf16 peak and link bandwidths of one accelerator.

Memory is what the driver reports (GiB), not the marketing GB. `link_gbs` is the per-direction bandwidth
between devices of one node (NVLink, or PCIe where there is none); `pcie_gbs` is host <-> device, which
CPU offload crosses every step. The `cpu` device is this machine: one host memory that every process
shares, no separate device memory, and no known peak (give --peak_tflops to get times).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    peak_tflops: Optional[float]  # dense bf16/fp16 tensor-core peak
    link_gbs: float  # intra-node, per direction
    pcie_gbs: float
    runtime_gib: float  # CUDA context, cuBLAS/NCCL workspaces (GPU); interpreter + torch + colossalai (CPU)
    host_only: bool = False
    host_runtime_gib: float = 3.0  # host memory of one GPU rank's process (CUDA libraries, interpreter)


DEVICES = {
    d.name: d
    for d in (
        Device("a100-40g", 40.0, 312.0, 300.0, 25.0, 1.0),
        Device("a100-80g", 80.0, 312.0, 300.0, 25.0, 1.0),
        Device("a800-80g", 80.0, 312.0, 200.0, 25.0, 1.0),  # NVLink cut to 400 GB/s both ways
        Device("h100-80g", 79.6, 989.0, 450.0, 50.0, 1.0),
        Device("h800-80g", 79.6, 989.0, 200.0, 50.0, 1.0),
        Device("h200-141g", 140.4, 989.0, 450.0, 50.0, 1.0),
        Device("l40s-48g", 45.0, 362.0, 25.0, 25.0, 1.0),  # no NVLink: peers talk over PCIe
        Device("4090-24g", 24.0, 165.0, 25.0, 25.0, 1.0),
    )
}
DEVICE_NAMES = tuple(DEVICES) + ("cpu",)

# Host memory bandwidth one node's CPU Adam shares (GB/s): the offloaded step is bound by it.
HOST_MEMORY_GBS = 100.0


def host_memory_gib() -> float:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def cpu_device(peak_tflops: Optional[float] = None) -> Device:
    # Measured on this machine (bench/memory.py's runtime floor): a rank's RSS once torch, transformers and
    # colossalai are imported, 0.40 GiB.
    return Device("cpu", host_memory_gib(), peak_tflops, 10.0, 1e9, 0.4, host_only=True, host_runtime_gib=0.0)


def resolve(name: Optional[str], memory_gib: Optional[float], peak_tflops: Optional[float]) -> Device:
    """The table's device (or this machine's for `cpu`), with --gpu_memory_gb / --peak_tflops overriding it;
    a custom device needs both."""
    if name == "cpu":
        base = cpu_device(peak_tflops)
    elif name is not None:
        base = DEVICES[name]
    else:
        base = Device("custom", memory_gib or 0.0, peak_tflops, 25.0, 25.0, 1.0)
    return Device(base.name, memory_gib if memory_gib else base.memory_gib,
                  peak_tflops if peak_tflops else base.peak_tflops, base.link_gbs, base.pcie_gbs,
                  base.runtime_gib, base.host_only, base.host_runtime_gib)
