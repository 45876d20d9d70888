"""The planner's flags: every train.py flag (TrainConfig, parsed by the same build_parser) plus the cluster."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from ..training import config_file
from ..training.config import TrainConfig, build_parser, flag
from .devices import DEVICE_NAMES
from .shapes import MOE_NOT_PLANNED
from ..errors import InputError


@dataclass
class PlanConfig(TrainConfig):
    """The cluster the run is planned for, and what the planner prints."""
    SECTION = "cluster"

    gpu: Optional[str] = flag(None, "Device of the cluster (memory, dense bf16 peak, links); 'cpu' is this machine "
                                  "(host memory only). Or give --gpu_memory_gb and --peak_tflops.",
                            choices=DEVICE_NAMES)
    gpu_memory_gb: Optional[float] = flag(None, "Memory of one device in GiB (overrides --gpu's).")
    nodes: int = flag(1, "Nodes in the cluster.")
    gpus_per_node: int = flag(8, "Devices (processes) per node.")
    host_memory_gb: Optional[float] = flag(None, "Host memory of one node in GiB (default: 1024 on a GPU node, this "
                                               "machine's with --gpu cpu).")
    tokens: Optional[float] = flag(None, "Tokens to train on, for the run's duration (e.g. 8.5e9).")
    mfu: Optional[float] = flag(None, "Fraction of the dense peak the kernels reach, before recomputation and the "
                                    "pipeline bubble (default per plugin, from published runs: see README).")
    fragmentation: float = flag(0.10, "Memory margin for the allocator's caching and fragmentation, as a fraction.")
    search: bool = flag(False, "List the configurations that fit this cluster, fastest first.")
    top: int = flag(10, "How many configurations --search lists.")
    json: bool = flag(False, "Print one JSON object instead of the report.")

    def validate(self) -> None:
        # The planner reads no data: without --dataset it plans rows of --max_length tokens, as --benchmark.
        if not self.dataset:
            self.benchmark = True
        super().validate()
        if self.gpu is None and not (self.gpu_memory_gb and self.peak_tflops):
            raise InputError(f"--gpu: give a device ({', '.join(DEVICE_NAMES)}) or both --gpu_memory_gb "
                             "and --peak_tflops")
        for name in ("nodes", "gpus_per_node", "top"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1")
        for name in ("gpu_memory_gb", "host_memory_gb", "tokens", "peak_tflops"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise InputError(f"--{name} must be > 0")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise InputError("--mfu must be in (0, 1]")
        if not 0 <= self.fragmentation < 1:
            raise InputError("--fragmentation must be in [0, 1)")
        if self.plugin == "moe":
            raise InputError(f"--plugin moe: {MOE_NOT_PLANNED}")
        if self.plugin == "3d":
            problem = layout_problem(self, self.nodes * self.gpus_per_node)
            if problem:
                raise InputError(f"{problem}")

    def train_flags(self) -> List[str]:
        """The train.py flags of this plan that differ from their defaults (cluster flags left out)."""
        flags = []
        for name, default in TRAIN_DEFAULTS.items():
            value = getattr(self, name)
            if name in ("plan", "benchmark") or value == default:
                continue
            if name == "tensorboard_dir" and value == os.path.join(self.save_dir, "logs"):
                continue  # validate() fills it in
            if isinstance(value, bool):
                flags.append(f"--{name}")
            elif isinstance(value, list):
                flags += [f"--{name}", *map(str, value)]
            else:
                flags += [f"--{name}", str(value)]
        if self.dataset is None:
            flags += ["--dataset", "DATA_DIR"]
        return flags


TRAIN_DEFAULTS = {f.name: f.default for f in TrainConfig.__dataclass_fields__.values()}


def layout_problem(cfg, world: int) -> Optional[str]:
    """What Colossal-AI (or training.plugins.check_3d) would refuse in this 3d layout, or None."""
    sp = cfg.sp if cfg.enable_sequence_parallelism and cfg.sp_mode == "all_to_all" else 1
    if world % (cfg.tp * cfg.pp * sp):
        return f"--tp {cfg.tp} --pp {cfg.pp} --sp {cfg.sp}: {world} devices are not divisible by tp*pp*sp"
    if cfg.pp > 1 and cfg.zero_stage == 2:
        return "--pp with --zero_stage 2: Colossal-AI allows ZeRO 0 or 1 with pipeline parallelism"
    if cfg.pp > 1 and (cfg.batch_size % cfg.microbatch_size or cfg.batch_size // cfg.microbatch_size < cfg.pp):
        return (f"--pp {cfg.pp}: needs --batch_size a multiple of --microbatch_size and at least {cfg.pp} "
                f"micro-batches (use --batch_size {cfg.pp * cfg.microbatch_size})")
    if cfg.sp > 1 and sp == 1:
        return "--sp: needs --enable_sequence_parallelism --sp_mode all_to_all"
    if cfg.enable_sequence_parallelism and cfg.sp_mode != "all_to_all" and cfg.tp == 1:
        return f"--sp_mode {cfg.sp_mode}: splits over the tensor-parallel group; give --tp 2 or more"
    pieces = sp if cfg.sp_mode == "all_to_all" else cfg.tp
    if cfg.enable_sequence_parallelism and cfg.max_length % pieces:
        return f"--enable_sequence_parallelism: --max_length {cfg.max_length} must be a multiple of {pieces}"
    return None


def parse(argv: Optional[List[str]] = None) -> PlanConfig:
    parser = build_parser(PlanConfig, prog="python -m colossal_hammer.plan", description="Plan a training run: memory per device, fit, speed, and the "
                                                  "command. Takes every train.py flag plus the cluster's.")
    return config_file.parse(PlanConfig, parser, argv)
