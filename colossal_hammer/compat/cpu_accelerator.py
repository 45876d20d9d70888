"""Make Colossal-AI 0.5.0's Booster plugins run on a CPU-only host over gloo.

Colossal-AI ships a `CpuAccelerator`, but most of its methods raise "not supported for cpu
accelerator", and a few code paths assume CUDA. Each patch below fills one of those gaps with the
CPU's honest equivalent: there is a single in-order execution stream on a CPU, so streams and events
are no-ops whose `synchronize`/`wait` return at once; RNG is torch's CPU generator.

`activate()` does nothing when a CUDA device is present, so the GPU path runs Colossal-AI untouched.
Set `COLOSSAL_HAMMER_CPU_COMPAT=0` to switch the layer off even on CPU (to see the raw failures).
"""

import contextlib
import os

import torch
import torch.distributed

from ..errors import InputError
from . import host_memory, tied_weights

_ACTIVE = False
# The patches replace private methods of this release, read in its source; on another one they could miss, or
# patch something that changed meaning, without a word.
PATCHED_VERSION = "0.5.0"


def check_version(installed: str) -> None:
    if installed != PATCHED_VERSION:
        raise InputError(f"the CPU layer (colossal_hammer/compat) patches Colossal-AI {PATCHED_VERSION}, and "
                         f"colossalai {installed} is installed: pip install colossalai=={PATCHED_VERSION} --no-deps "
                         "(or set COLOSSAL_HAMMER_CPU_COMPAT=0 to run without the layer)")


def wanted() -> bool:
    if os.environ.get("COLOSSAL_HAMMER_CPU_COMPAT", "1") == "0":
        return False
    return not torch.cuda.is_available()


def is_active() -> bool:
    return _ACTIVE


class _NullStream:
    """A stream on a device that executes everything in order: nothing to wait for."""

    def __init__(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def wait_stream(self, stream):
        pass

    def wait_event(self, event):
        pass

    def record_event(self, event=None):
        return event if event is not None else _NullEvent()

    def query(self):
        return True


class _NullEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, stream=None):
        pass

    def wait(self, stream=None):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, end_event):
        return 0.0


def _complete_cpu_accelerator_class():
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator

    class CompleteCpuAccelerator(CpuAccelerator):
        # ---- device ----
        def current_device(self) -> int:
            return 0

        def set_device(self, device=None) -> None:
            pass

        def synchronize(self, device=None):
            pass

        def device_count(self):
            return 1

        def get_device_name(self, device=None) -> str:
            return "cpu"

        # ---- RNG: the upstream version passes `device` to torch.get_rng_state, which takes none ----
        def get_rng_state(self, device=None) -> torch.Tensor:
            return torch.get_rng_state()

        def get_rng_state_all(self):
            return [torch.get_rng_state()]

        def set_rng_state(self, new_state, device=None) -> None:
            torch.set_rng_state(new_state)

        def set_rng_state_all(self, new_states) -> None:
            torch.set_rng_state(new_states[0])

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def seed(self) -> None:
            torch.seed()

        def seed_all(self) -> None:
            torch.seed()

        def initial_seed(self) -> int:
            return torch.initial_seed()

        # ---- memory: the host has no device allocator to query ----
        def empty_cache(self) -> None:
            pass

        def memory_stats(self, device=None):
            return {}

        def memory_summary(self, device=None, abbreviated=False) -> str:
            return ""

        def memory_allocated(self, device=None) -> int:
            return 0

        def max_memory_allocated(self, device=None) -> int:
            return 0

        def reset_max_memory_allocated(self, device=None) -> None:
            pass

        def reset_max_memory_cached(self, device=None) -> None:
            pass

        def reset_peak_memory_stats(self, device=None) -> None:
            pass

        # ---- streams and events ----
        def Stream(self, device=None, priority=0, **kwargs):
            return _NullStream()

        def Event(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
            return _NullEvent()

        def current_stream(self, device=None):
            return _NullStream()

        def default_stream(self, device=None):
            return _NullStream()

        def set_stream(self, stream_):
            pass

        def stream(self, stream_):
            return contextlib.nullcontext()

    return CompleteCpuAccelerator


def _patch_torch_amp_scaler() -> None:
    """Colossal-AI's torch AMP optimizer (ddp fp16) builds `torch.cuda.amp.GradScaler`, which turns itself off
    without CUDA (no scaling, no overflow skip); torch's CPU GradScaler does the same job on the host."""
    from colossalai.booster.mixed_precision import fp16_torch

    original = fp16_torch.TorchAMPOptimizer.__init__
    if getattr(original, "_colossal_hammer", False):
        return

    def __init__(self, optim, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        original(self, optim, init_scale, growth_factor, backoff_factor, growth_interval)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth_factor,
                                           backoff_factor=backoff_factor, growth_interval=growth_interval)

    __init__._colossal_hammer = True
    fp16_torch.TorchAMPOptimizer.__init__ = __init__


def _patch_record_stream() -> None:
    """ZeRO's overlapped reduction calls `tensor.record_stream(stream)`; on CPU there is one stream."""
    original = torch.Tensor.record_stream
    if getattr(original, "_colossal_hammer", False):
        return

    def record_stream(self, stream):
        if isinstance(stream, _NullStream) or self.device.type == "cpu":
            return None
        return original(self, stream)

    record_stream._colossal_hammer = True
    torch.Tensor.record_stream = record_stream


def _patch_low_level_zero_sanity_check() -> None:
    """`LowLevelZeroOptimizer._sanity_checks` asserts cuda/npu; keep its dtype check, drop the device one."""
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    def _sanity_checks(self):
        for param_group in self.optim.param_groups:
            for param in param_group["params"]:
                if not getattr(param, "skip_zero_check", False):
                    assert (
                        param.dtype == self._dtype
                    ), f"Parameters are expected to have the same dtype `{self._dtype}`, but got `{param.dtype}`"

    LowLevelZeroOptimizer._sanity_checks = _sanity_checks


def _patch_cpu_adam_kernel() -> None:
    """CPUAdam/HybridAdam load a C++ kernel that cannot be built without CUDA: use the torch one."""
    from colossalai.kernel import kernel_loader

    from .cpu_adam import TorchCPUAdamModule

    kernel_loader.CPUAdamLoader.load = lambda self, ext_name=None: TorchCPUAdamModule


def _patch_gemini_chunks() -> None:
    """Gemini keeps a chunk's shard either in compute memory (`cuda_shard`) or offloaded to the host
    (`cpu_shard`), and tells the two apart by device *type*: a shard on a "cpu" device is offloaded.

    On a CPU-only host the compute device is the CPU, so every shard looks offloaded: `close_chunk`
    parks it in `cpu_shard`, `access_chunk` "moves" it to the CPU (a no-op) and the all-gather then
    asserts `cuda_shard is not None` (chunk.py:522). There is one memory here, so the honest model is:
    a shard always lives in compute memory and moving it between host and device does nothing.
    Three patches make Gemini's state machine say so:
      - `close_chunk` keeps the shard in `cuda_shard` (offloading to the same memory saves nothing);
      - `shard_move` is a no-op (there is no other memory to move to);
      - `device_type` reports a closed chunk as in compute memory ("cuda", the name every caller
        compares against), so `access_chunk` gathers it, `optim_update` copies the fp32 master
        shard into the working shard at once, and the placement policy counts it where it is.
    Pinned memory does not exist without an accelerator: chunks never pin here.
    """
    import inspect

    from colossalai.zero.gemini.chunk.chunk import Chunk

    upstream_init = Chunk.__init__
    upstream_close = Chunk.close_chunk
    signature = inspect.signature(upstream_init)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["pin_memory"] = False
        upstream_init(*bound.args, **bound.kwargs)

    def close_chunk(self):
        upstream_close(self)
        if not self.keep_gathered and self.cuda_shard is None and self.cpu_shard is not None:
            self.cuda_shard, self.cpu_shard = self.cpu_shard, None

    def shard_move(self, device, force_copy: bool = False, non_blocking=False):
        assert not self.is_gathered

    def device_type(self) -> str:
        if self.chunk_temp is not None:
            return self.chunk_temp.device.type
        return "cuda"

    Chunk.__init__ = __init__
    Chunk.close_chunk = close_chunk
    Chunk.shard_move = shard_move
    Chunk.device_type = property(device_type)


def _patch_moe_checkpoint_cuda_calls() -> None:
    """MoECheckpointIO gathers optimizer states (`--optimizer_checkpoint gathered`) after `v.cuda()`
    (moe_checkpoint.py:284), and its unsharded model save after `param.data.cuda()` (:697): the accelerator's
    memory, which on a CPU-only host is the host's. Inside those two methods `.cuda()` leaves a tensor where
    it is; everywhere else it still fails as torch makes it."""
    import functools

    from colossalai.checkpoint_io.moe_checkpoint import MoECheckpointIO

    def on_host(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            original = torch.Tensor.cuda
            torch.Tensor.cuda = lambda self, *a, **k: self
            try:
                return method(*args, **kwargs)
            finally:
                torch.Tensor.cuda = original
        return wrapper

    for name in ("gather_from_sharded_optimizer_state", "pre_save_model"):
        setattr(MoECheckpointIO, name, on_host(getattr(MoECheckpointIO, name)))


def activate() -> bool:
    """Install the CPU layer if no CUDA device is present. Idempotent. Returns whether it is active."""
    global _ACTIVE
    if _ACTIVE or not wanted():
        return _ACTIVE
    from importlib.metadata import version

    check_version(version("colossalai"))
    # pipeline/p2p.py calls an API that torch removed; on a CPU host HCCL is never available.
    if not hasattr(torch.distributed, "is_hccl_available"):
        torch.distributed.is_hccl_available = lambda: False

    from colossalai.accelerator import set_accelerator

    set_accelerator(_complete_cpu_accelerator_class()())
    _patch_record_stream()
    _patch_low_level_zero_sanity_check()
    _patch_cpu_adam_kernel()
    _patch_gemini_chunks()
    _patch_moe_checkpoint_cuda_calls()
    _patch_torch_amp_scaler()
    tied_weights.patch()
    host_memory.return_freed_memory()
    _ACTIVE = True
    return True
