"""From the CLI's parallelism flags to one Colossal-AI Booster plugin, and what the loop must know of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

from ..errors import InputError
from ..model.families import has_shardformer_policy
from ..rules import VOCAB_MULTIPLE, fixed_row_length
from .config import PLUGINS, TrainConfig

# What runs on a CPU-only host through colossal_hammer.compat (tests/training/test_plugin_parity.py).
CPU_PLUGINS = ("ddp", "zero2", "zero2_cpu", "gemini", "3d", "moe")


def _refuse(message: str) -> None:
    """A bad flag combination: one `error:` line (train.py prints it from rank 0 only) and exit status 2."""
    raise InputError(message)


# Plugins that split the model with Colossal-AI's shardformer, which needs a policy for its class.
SHARDFORMER_PLUGINS = ("3d", "moe")


def check_model_supported(cfg: TrainConfig, model) -> None:
    if cfg.plugin in SHARDFORMER_PLUGINS and not has_shardformer_policy(model):
        others = ", ".join(p for p in PLUGINS if p not in SHARDFORMER_PLUGINS)
        _refuse(f"--plugin {cfg.plugin}: Colossal-AI 0.5.0 has no shardformer policy for {type(model).__name__} "
                f"(model_type {model.config.model_type}); train it with --plugin {others}")


def check_3d(cfg: TrainConfig, world: int) -> None:
    """Refuse at start, in one line, what HybridParallelPlugin would assert on deep in a step."""
    sp = cfg.sp if cfg.enable_sequence_parallelism and cfg.sp_mode == "all_to_all" else 1
    model_parallel = cfg.tp * cfg.pp * sp
    if world % model_parallel:
        _refuse(f"--tp {cfg.tp} --pp {cfg.pp} --sp {cfg.sp}: world size {world} is not divisible by "
                f"tp*pp*sp = {model_parallel}")
    if cfg.sp > 1 and sp == 1:
        _refuse("--sp: a sequence-parallel size needs --enable_sequence_parallelism --sp_mode all_to_all "
                "(split_gather and ring use the tp group as sp group: leave --sp 1)")
    if cfg.enable_sequence_parallelism:
        if cfg.sp_mode != "all_to_all" and cfg.tp == 1:
            _refuse(f"--sp_mode {cfg.sp_mode}: splits rows over the tensor-parallel group; give --tp 2 or more, "
                    "or use --sp_mode all_to_all --sp N")
        # Rows are split along the sequence over the sp group (split_gather/ring: the tp group).
        pieces = sp if cfg.sp_mode == "all_to_all" else cfg.tp
        if not fixed_row_length(cfg) or cfg.max_length % pieces:
            _refuse(f"--enable_sequence_parallelism --sp_mode {cfg.sp_mode}: each row is split into {pieces} equal "
                    f"pieces, so every row needs the same length, a multiple of {pieces}; use --padding_mode "
                    f"max_length with --max_length a multiple of {pieces} (got {cfg.padding_mode}, {cfg.max_length})")
    if cfg.pp > 1:
        if cfg.batch_size % cfg.microbatch_size:
            _refuse(f"--batch_size {cfg.batch_size}: must be a multiple of --microbatch_size {cfg.microbatch_size}")
        # the loop hands the pipeline all accumulation steps of an optimizer step as one batch
        if cfg.batch_size * cfg.accumulation_steps // cfg.microbatch_size < cfg.pp:
            _refuse(
                f"--pp {cfg.pp} --batch_size {cfg.batch_size} --accumulation_steps {cfg.accumulation_steps} "
                f"--microbatch_size {cfg.microbatch_size}: the pipeline needs at least {cfg.pp} micro-batches per "
                f"step; use --batch_size {cfg.pp * cfg.microbatch_size} (or more, a multiple of --microbatch_size)")


@dataclass
class ParallelLayout:
    """What the training loop needs to know about how a plugin splits the work."""

    dp_size: int
    dp_rank: int
    pipeline: bool  # steps go through booster.execute_pipeline
    loss_owner: bool  # this rank holds a loss that counts once in the data-parallel mean
    grad_accumulation: str  # "no_sync": skip the all-reduce between micro-steps; "sync": plugin accumulates itself


@dataclass
class PrecisionPlan:
    """What the loop does itself because the plugin does not. DDP keeps fp32 parameters: bf16 there is
    autocast over fp32 weights, fp16 autocast with torch AMP's loss scaling, and clipping is ours. ZeRO,
    Gemini and the hybrid plugin own precision and clip with max_norm; Gemini and 3d shard at boost, so
    the model is built under LazyInitContext and each rank materialises only its part."""

    model_dtype: str  # the dtype the model is built in: fp32, bf16 or fp16
    autocast: Optional[str]  # compute dtype of torch.autocast around the forward, if any
    booster_precision: Optional[str]  # Booster(mixed_precision=...)
    clip_in_loop: bool
    lazy_init: bool
    torch_loss_scaling: bool = False  # ddp fp16: the loop's optimizer is torch_amp_optimizer's


def precision_plan(plugin, cfg: TrainConfig) -> PrecisionPlan:
    from colossalai.booster.plugin import GeminiPlugin, HybridParallelPlugin, TorchDDPPlugin

    if not isinstance(plugin, TorchDDPPlugin):
        return PrecisionPlan(cfg.mixed_precision, None, None, clip_in_loop=False,
                             lazy_init=isinstance(plugin, (GeminiPlugin, HybridParallelPlugin)))
    # fp16 is torch AMP's: autocast plus a GradScaler (`torch_amp_optimizer`). Not the Booster's fp16 precision,
    # which wraps the DDP model in its autocast module, where TorchDDPPlugin.no_sync (gradient accumulation)
    # then asserts that the model is not boosted.
    return PrecisionPlan("fp32", autocast=None if cfg.mixed_precision == "fp32" else cfg.mixed_precision,
                         booster_precision=None, clip_in_loop=cfg.grad_clip > 0, lazy_init=False,
                         torch_loss_scaling=cfg.mixed_precision == "fp16")


def torch_amp_optimizer(boosted, cfg: TrainConfig):
    """The booster's DDP optimizer wrapper swapped for Colossal-AI's torch AMP one (the same wrapper class plus
    a GradScaler) around the same optimizer: `backward` scales the loss, `step` unscales and skips overflows."""
    from colossalai.booster.mixed_precision.fp16_torch import TorchAMPOptimizer

    return TorchAMPOptimizer(boosted.unwrap(), init_scale=cfg.initial_loss_scale)


def build_plugin(cfg: TrainConfig, model_config=None):
    """Return the Booster plugin for `cfg.plugin`. Raises InputError (one line) on a bad combination
    (`model_config`, the HF config of the model to train, decides what needs the moe plugin)."""
    from colossalai.booster.plugin import HybridParallelPlugin, LowLevelZeroPlugin, TorchDDPPlugin

    from .. import compat
    from ..moe import plugin as moe_plugin

    if model_config is not None and (why := moe_plugin.refusal(cfg, model_config, dist.get_world_size())):
        _refuse(why)

    if cfg.plugin == "gemini_auto" and compat.is_active():
        raise InputError(
            "gemini_auto places chunks between GPU and host memory by measuring the GPU; a CPU-only "
            "host has one memory, so it cannot run here. Plugins that run on CPU: " + ", ".join(CPU_PLUGINS)
        )
    clip = cfg.grad_clip if cfg.grad_clip > 0 else 0.0
    if cfg.plugin == "ddp":
        # find_unused_parameters stays off: frozen parameters (stage-1 vocabulary training, LoRA's base) do
        # not require grad, so DDP's reducer never waits for them; and grad checkpointing, which re-enters
        # forward, is incompatible with it.
        # gradient_as_bucket_view: param.grad is a view into the reducer's buckets instead of a second fp32
        # copy of every gradient (4 bytes/parameter; bench/memory.py: 350M ddp steady peak 8.56 -> see
        # README's memory table). Same values, same reduction order.
        return TorchDDPPlugin(find_unused_parameters=False, gradient_as_bucket_view=True)
    if cfg.plugin in ("gemini", "gemini_auto"):
        return _gemini_plugin(cfg, clip, host_only=compat.is_active())
    if cfg.plugin in ("zero2", "zero2_cpu"):
        return LowLevelZeroPlugin(
            stage=2,
            precision=cfg.mixed_precision,
            initial_scale=cfg.initial_loss_scale,
            cpu_offload=cfg.plugin == "zero2_cpu",
            max_norm=clip,
        )
    if cfg.plugin == "3d":
        check_3d(cfg, dist.get_world_size())
        kwargs = dict(
            tp_size=cfg.tp,
            pp_size=cfg.pp,
            sp_size=cfg.sp,
            zero_stage=cfg.zero_stage,
            enable_flash_attention=cfg.use_flash_attn,
            enable_sequence_parallelism=cfg.enable_sequence_parallelism,
            cpu_offload=cfg.zero_stage >= 1 and cfg.zero_cpu_offload,
            # The loss is computed on vocabulary shards (shardformer's dist_cross_entropy); False
            # would all-gather fp32 logits of the full vocabulary on every tp rank, although only
            # the loss is read (loop.py never touches logits). DPO sums log-probs over the whole vocabulary's
            # softmax (dpo.sequence_logps), so there lm_head gathers its output.
            parallel_output=cfg.task != "dpo",
            # The pipeline caches the first micro-batch's shapes and reuses them for every later
            # send/receive: right only when every row has the same length.
            enable_metadata_cache=fixed_row_length(cfg),
            # build_model pads the vocabulary to this multiple already (vocab_multiple), so the
            # shardformer never pads it: its padded tensors break 0.5.0's checkpoint save.
            make_vocab_size_divisible_by=VOCAB_MULTIPLE,
            max_norm=clip,
            precision=cfg.mixed_precision,
            initial_scale=cfg.initial_loss_scale,
        )
        if cfg.enable_sequence_parallelism:
            kwargs["sequence_parallelism_mode"] = cfg.sp_mode
        if cfg.pp > 1:
            kwargs["microbatch_size"] = cfg.microbatch_size
        return HybridParallelPlugin(**kwargs)
    if cfg.plugin == "moe":
        return moe_plugin.build(cfg)
    raise InputError(f"unknown plugin {cfg.plugin!r}")


# Gemini's chunk size knob, in Mi (2**20) elements; Colossal-AI's default is 32. A model whose parameters
# sum to less than this stays in one chunk that every rank holds whole (ZeRO turns into DDP), so a tiny
# rehearsal model needs a small value to shard as a real one does.
GEMINI_CHUNK_ENV = "COLOSSAL_HAMMER_GEMINI_CHUNK_M"


def _gemini_chunk_m() -> float | None:
    raw = os.environ.get(GEMINI_CHUNK_ENV)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InputError(f"{GEMINI_CHUNK_ENV}={raw!r}: give a positive number of Mi (2**20) elements, "
                         "e.g. 0.01")
    return value


def _gemini_plugin(cfg: TrainConfig, clip: float, host_only: bool):
    """GeminiPlugin, and a record of the chunk layout it builds (see `gemini_layout`).

    `host_only`: no accelerator (the CPU compat layer is active). Async reduce then goes off, and with it
    the pinned host buffers it forces (chunk.py:314 refuses pin_memory without an accelerator); with an
    accelerator both stay as Colossal-AI sets them."""
    from colossalai.booster.plugin import GeminiPlugin

    chunk_kwargs = {}
    chunk_m = _gemini_chunk_m()
    if chunk_m is not None:
        # min_chunk_size_m: below it everything is one gathered chunk; search_range_m: how far above the
        # largest parameter the chunk size may grow. Both small: chunks about the size of a big tensor.
        chunk_kwargs = dict(min_chunk_size_m=chunk_m, search_range_m=chunk_m)
    plugin = GeminiPlugin(
        precision=cfg.mixed_precision,
        placement_policy="auto" if cfg.plugin == "gemini_auto" else "static",
        initial_scale=cfg.initial_loss_scale,
        max_norm=clip,
        enable_gradient_accumulation=cfg.accumulation_steps > 1,
        enable_flash_attention=cfg.use_flash_attn,
        **({"enable_async_reduce": False, "pin_memory": False} if host_only else {}),
        **chunk_kwargs,
    )
    upstream_configure = plugin.configure

    def configure(model, optimizer=None, *args, **kwargs):
        boosted = upstream_configure(model, optimizer, *args, **kwargs)
        plugin.gemini_layout = gemini_layout(boosted[0])  # all ranks are here: the layout is gathered once
        return boosted

    plugin.configure = configure
    return plugin


def gemini_layout(model) -> dict:
    """How GeminiDDP split the parameters, read back from its chunk manager on every rank (collective).

    Counts elements of the working (bf16/fp16) and fp32 master chunks whose storage each rank really holds:
    a sharded chunk keeps 1/world of itself per rank, a gathered one all of it."""
    manager = model.chunk_manager

    def held(chunk) -> int:
        if chunk.is_gathered:
            return chunk.cuda_global_chunk.untyped_storage().nbytes() // chunk.cuda_global_chunk.element_size()
        shard = chunk.cuda_shard if chunk.cuda_shard is not None else chunk.cpu_shard
        return shard.numel()

    chunks16 = manager.get_chunks(model.fp16_params)
    chunks32 = manager.get_chunks(model.fp32_params)
    mine = {"working": sum(held(c) for c in chunks16), "master": sum(held(c) for c in chunks32),
            "shard_begins": [int(c.shard_begin) for c in chunks16]}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {
        "chunks": len(chunks16),
        "sharded_chunks": sum(not c.keep_gathered for c in chunks16),
        "chunk_sizes": sorted({int(c.chunk_size) for c in chunks16}),
        "param_numel": sum(p.numel() for p in model.fp16_params),
        "working_numel_per_rank": [r["working"] for r in everyone],
        "master_numel_per_rank": [r["master"] for r in everyone],
        "shard_begins_per_rank": [r["shard_begins"] for r in everyone],
    }


def parallel_layout_of(plugin) -> ParallelLayout:
    from colossalai.booster.plugin import HybridParallelPlugin

    if isinstance(plugin, HybridParallelPlugin):
        pipeline = plugin.pp_size > 1
        last_stage = plugin.stage_manager.is_last_stage() if pipeline else True
        tp_first = dist.get_rank(plugin.tp_group) == 0
        sp_first = plugin.sp_group is None or dist.get_rank(plugin.sp_group) == 0
        no_sync = plugin.zero_stage != 2 and not pipeline
        # dp_group holds the ranks that read different samples. plugin.dp_size counts the group
        # gradients are averaged over, which under all_to_all sp also spans the sp ranks (the
        # same rows, split along the sequence): with it the sampler would skip half the data.
        return ParallelLayout(
            dp_size=dist.get_world_size(plugin.dp_group),
            dp_rank=dist.get_rank(plugin.dp_group),
            pipeline=pipeline,
            loss_owner=last_stage and tp_first and sp_first,
            grad_accumulation="no_sync" if no_sync else "sync",
        )
    no_sync = plugin.support_no_sync()
    return ParallelLayout(
        dp_size=dist.get_world_size(),
        dp_rank=dist.get_rank(),
        pipeline=False,
        loss_owner=True,
        grad_accumulation="no_sync" if no_sync else "sync",
    )


def describe_plugin(plugin) -> dict:
    """What a plugin actually is, read back from the object: tests use it to catch silent fallbacks."""
    # __qualname__: LowLevelZeroPlugin rewrites its class __name__ to "LowLevelZeroPlugin_ZeRO-<stage>".
    info = {"plugin_class": type(plugin).__qualname__}
    if hasattr(plugin, "ddp_kwargs"):  # TorchDDPPlugin: gradients as views into DDP's buckets (one fp32 copy)
        info["gradient_as_bucket_view"] = bool(plugin.ddp_kwargs.get("gradient_as_bucket_view"))
    if hasattr(plugin, "zero_optim_kwargs"):  # LowLevelZeroPlugin
        info.update(zero_stage=plugin.stage, cpu_offload=bool(plugin.zero_optim_kwargs.get("cpu_offload")),
                    precision=plugin.precision)
    if hasattr(plugin, "gemini_config"):  # GeminiPlugin
        info.update(placement_policy=plugin.gemini_config["placement_policy"],
                    precision=str(plugin.gemini_config["mixed_precision"]).replace("torch.", ""),
                    pin_memory=plugin.gemini_config["pin_memory"],
                    async_reduce=plugin.gemini_config["enable_async_reduce"])
        if getattr(plugin, "gemini_layout", None):
            info["gemini_layout"] = plugin.gemini_layout
    if hasattr(plugin, "pp_size"):  # HybridParallelPlugin
        info.update(tp_size=plugin.tp_size, pp_size=plugin.pp_size, sp_size=plugin.sp_size, dp_size=plugin.dp_size,
                    zero_stage=plugin.zero_stage, cpu_offload=bool(plugin.cpu_offload), precision=plugin.precision)
    if hasattr(plugin, "ep_size"):  # MoeHybridParallelPlugin
        info.update(ep_size=plugin.ep_size, moe_dp_size=plugin.moe_dp_size)
    return info
