"""`--plugin moe`: Colossal-AI's MoeHybridParallelPlugin, and what it cannot run refused in one line.

The plugin splits the experts of every layer over `--ep` data-parallel ranks (each holds E/ep experts and
tokens travel to their experts by all_to_all), replicates the rest of the model over the data-parallel
group, and can add tensor parallelism (`--tp`) and ZeRO-1 (`--zero_stage 1`) on top.
"""

from __future__ import annotations

from ..rules import VOCAB_MULTIPLE
from ..model.moe_configs import is_moe


def refusal(cfg, config, world: int) -> str | None:
    """Why this run cannot go on `--plugin moe` (or this MoE model on another plugin), or None."""
    moe = is_moe(config)
    if cfg.plugin != "moe":
        if moe and cfg.plugin == "3d":
            return ("--plugin 3d: its shardformer policy for Mixtral needs an expert-parallel group; train MoE models "
                    "with --plugin moe (or ddp, zero2, zero2_cpu, gemini, which keep every expert on every rank)")
        return None
    if not moe:
        return (f"--plugin moe: the model is a dense {config.model_type}; use --model_config tiny_moe, a Mixtral "
                "folder, or `python -m colossal_hammer.model.upcycle` first (dense models: --plugin 3d)")
    if cfg.pp > 1:
        return ("--plugin moe --pp: the router's load-balancing loss is added on the stage that runs each layer, "
                "which the pipeline schedule does not allow yet; use --tp/--ep/--zero_stage")
    if cfg.enable_sequence_parallelism:
        return "--plugin moe --enable_sequence_parallelism: not supported yet with the router losses; drop it"
    if cfg.zero_stage == 2:
        return ("--plugin moe --zero_stage 2: Colossal-AI's ZeRO-2 hangs when an expert gets no token in a step; "
                "use --zero_stage 1")
    if world % cfg.tp:
        return f"--plugin moe --tp {cfg.tp}: the world size {world} is not divisible by it"
    dp = world // cfg.tp
    if dp % cfg.ep:
        return f"--ep {cfg.ep}: must divide the data-parallel size {dp} (world {world} / tp {cfg.tp})"
    if config.num_local_experts % cfg.ep:
        return f"--ep {cfg.ep}: must divide the model's {config.num_local_experts} experts"
    if cfg.ep > 1 and dp > 1 and cfg.zero_stage == 0:
        return (f"--plugin moe --ep {cfg.ep} --zero_stage 0: torch DDP reduces over one group, but experts and the "
                "rest reduce over different ones; use --zero_stage 1")
    if cfg.zero_stage > 0 and dp == 1:
        return ("--plugin moe --zero_stage 1 on one data-parallel rank: ZeRO shards nothing there, and Colossal-AI "
                "0.5.0 cannot load a gathered MoE optimizer checkpoint into it; use --zero_stage 0")
    if cfg.zero_stage > 0 and cfg.mixed_precision == "fp32":
        return "--plugin moe --zero_stage 1 trains in fp16 or bf16 only; use --mixed_precision bf16"
    if cfg.zero_cpu_offload and cfg.zero_stage == 0:
        return "--zero_cpu_offload needs --zero_stage 1"
    return None


def build(cfg):
    from colossalai.booster.plugin import MoeHybridParallelPlugin

    return MoeHybridParallelPlugin(
        tp_size=cfg.tp,
        pp_size=1,
        ep_size=cfg.ep,
        zero_stage=cfg.zero_stage,
        precision=cfg.mixed_precision,
        cpu_offload=cfg.zero_stage >= 1 and cfg.zero_cpu_offload,
        enable_flash_attention=cfg.use_flash_attn,
        # as plugin 3d: build_model pads the vocabulary to this multiple, so the shardformer never does
        make_vocab_size_divisible_by=VOCAB_MULTIPLE,
        max_norm=0.0,  # its norm is wrong for this plugin: the loop clips by moe/grad_norm.py's instead
        initial_scale=cfg.initial_loss_scale,
    )
