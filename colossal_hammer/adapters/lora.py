"""LoRA adapters through Colossal-AI's `booster.enable_lora` (peft), for every task train.py runs.

The base weights are frozen (peft sets requires_grad False), so the optimizer, its states and the
checkpoint hold only the adapters and `--lora_modules_to_save` (e.g. the embeddings and lm_head after a
vocabulary extension, whose new rows must still train). Colossal-AI 0.5.0 wires LoRA into TorchDDPPlugin,
LowLevelZeroPlugin and HybridParallelPlugin with tp 1; GeminiPlugin says it does not support it.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from ..errors import InputError
from ..model.adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD

# the linear layers of a Llama block; peft's "all-linear" would also take lm_head
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def enabled(cfg) -> bool:
    return cfg.lora_rank is not None


def module_names(text: Optional[str]) -> list:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def check(cfg, cuda: bool) -> None:
    """One line for a LoRA run that cannot work, before anything is built."""
    if not enabled(cfg):
        if cfg.lora_quantize:
            raise InputError("--lora_quantize needs --lora_rank R (QLoRA trains adapters on a 4-bit base)")
        return
    works = "use --plugin zero2 (or ddp, zero2_cpu)"
    if cfg.plugin in ("gemini", "gemini_auto"):
        raise InputError(f"--lora_rank: Colossal-AI's GeminiPlugin has no LoRA support; {works}")
    if cfg.plugin == "3d":
        # enable_lora asserts tp 1; at tp 1 Colossal-AI 0.5.0's shardformer fails on the PeftModel (tried:
        # with pp its Llama policy looks for embed_tokens on peft's wrapper; with zero it cannot replace the
        # frozen lm_head of the lazily built model)
        raise InputError(f"--lora_rank under --plugin 3d: Colossal-AI 0.5.0's shardformer cannot "
                         f"shard a peft model (tp > 1 unsupported, pp/zero fail in its Llama policy); {works}")
    if cfg.plugin == "moe":
        # tried: it trains an upcycled bf16 Mixtral (losses within 1.6e-4 of ddp's), but fails while materialising
        # the lazily built peft model of one saved in fp32 ("only change requires_grad flags of leaf variables")
        raise InputError(f"--lora_rank under --plugin moe: Colossal-AI 0.5.0's lazy initialisation fails on "
                         f"the peft model of an fp32 checkpoint trained in bf16; {works} (every expert on every rank)")
    if not (cfg.pretrained or cfg.load_weights_only):
        raise InputError("--lora_rank needs --pretrained DIR (or --load_weights_only DIR): a checkpoint "
                         "holds only the adapters, and they are applied to those weights")
    if cfg.lora_quantize and not cuda:
        raise InputError("--lora_quantize (QLoRA: bitsandbytes 4-bit base) needs a CUDA GPU; on this "
                         "host train the adapters on a bf16 base (drop --lora_quantize)")
    if not module_names(cfg.lora_target_modules):
        raise InputError("--lora_target_modules: give module names, e.g. q_proj,v_proj")


def lora_config(cfg):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=module_names(cfg.lora_target_modules),
                      modules_to_save=module_names(cfg.lora_modules_to_save) or None)


def apply(booster, model, cfg):
    """The model with adapters (a PeftModel), before boosting; names that match nothing are refused."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [n for n in module_names(cfg.lora_target_modules) + module_names(cfg.lora_modules_to_save) if n not in present]
    if missing:
        raise InputError(f"--lora_target_modules/--lora_modules_to_save: {', '.join(missing)} name no module "
                         f"of this model (its linear layers: {', '.join(LLAMA_LINEARS)}; embed_tokens, lm_head)")
    return booster.enable_lora(model, lora_config=lora_config(cfg), quantize=cfg.lora_quantize)


def peft_model(boosted):
    """The PeftModel under the Booster's wrapper, or None for a model without adapters."""
    from peft import PeftModel

    model = boosted.unwrap(unwrap_peft=False) if hasattr(boosted, "unwrap") else boosted
    return model if isinstance(model, PeftModel) else None


def inner_model(boosted):
    """The transformers model under the Booster's wrapper and peft's (Colossal-AI's own unwrap() hands out
    a state-dict proxy for a PeftModel)."""
    peft = peft_model(boosted)
    if peft is not None:
        return peft.get_base_model()
    return boosted.unwrap() if hasattr(boosted, "unwrap") else boosted


def save_adapter(booster, boosted, folder: str, base: dict) -> None:
    """peft's adapter folder (what PeftModel.from_pretrained loads), naming the base it was trained on and
    recording its weights' hash (`base_record`)."""
    booster.save_lora_as_pretrained(boosted, folder, use_safetensors=True)
    if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG)):
        with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as f:
            config = json.load(f)
        config["base_model_name_or_path"] = base["path"]
        with open(os.path.join(folder, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        with open(os.path.join(folder, BASE_RECORD), "w", encoding="utf-8") as f:
            json.dump(base, f, indent=2)


def load_adapter(boosted, folder: str) -> None:
    """Put saved adapter (and modules_to_save) weights back into the running model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = peft_model(boosted)
    saved = load_file(os.path.join(folder, ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, saved)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise InputError(f"{folder}: adapter weights {unexpected[:3]} do not fit this model's adapters; "
                         "resume with the --lora_* flags that saved it")


def trainable_fraction(model) -> tuple:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
