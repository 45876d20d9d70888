"""Build the causal LM to train: from an HF folder, or from a config for rehearsal runs."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from . import rope as rope_settings
from .families import DENSE_MODEL_TYPES, FAMILY_CONFIGS, family_config
from .moe_configs import MOE_CONFIGS, MOE_MODEL_TYPES, mixtral_config
from ..errors import InputError

# Named configs for runs without pretrained weights. Head counts are divisible by 2 and 4 so tensor
# parallelism can split them; vocab sizes are multiples of 64 for the same reason.
NAMED_CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096),
    # Published shapes (the models' config.json on the Hugging Face hub), for planning and shape rehearsals.
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                      rms_norm_eps=1e-5),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                       rms_norm_eps=1e-5),
    "llama2-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0,
                       rms_norm_eps=1e-5),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                      rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001),
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001),
}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# config.json key holding the vocabulary size before `pad_vocabulary`; export trims back to it.
UNPADDED_VOCAB_KEY = "unpadded_vocab_size"


def load_config(spec: str):
    """A LlamaConfig, or a MixtralConfig for an MoE preset or a JSON whose model_type is "mixtral"."""
    if spec in NAMED_CONFIGS:
        return LlamaConfig(**NAMED_CONFIGS[spec])
    if spec in MOE_CONFIGS:
        return mixtral_config(MOE_CONFIGS[spec])
    if spec in FAMILY_CONFIGS:
        return family_config(*FAMILY_CONFIGS[spec])
    if not os.path.isfile(spec):
        presets = sorted(NAMED_CONFIGS) + sorted(FAMILY_CONFIGS) + sorted(MOE_CONFIGS)
        raise InputError(f"--model_config {spec!r} is neither {presets} nor a JSON file")
    with open(spec, encoding="utf-8") as f:
        values = json.load(f)
    kind = values.pop("model_type", "llama")
    if kind == "llama":
        return LlamaConfig(**values)
    if kind in DENSE_MODEL_TYPES:
        return family_config(kind, values)
    if kind in MOE_MODEL_TYPES:
        return mixtral_config(values)
    raise InputError(f"--model_config {spec}: model_type {kind!r}; give one of "
                     f"{', '.join(map(repr, DENSE_MODEL_TYPES))} or {' or '.join(map(repr, MOE_MODEL_TYPES))} "
                     "(MixtralConfig)")


def unpadded_vocab_size(config) -> int:
    """The vocabulary the tokenizer (and the data) has; ids at or above it are padding rows."""
    return getattr(config, UNPADDED_VOCAB_KEY, None) or config.vocab_size


def pad_vocabulary(model, multiple: int) -> int:
    """Pad the input embeddings and lm_head with zero rows to a multiple of `multiple`; return the new size.

    Colossal-AI's shardformer pads a vocabulary that is not a multiple of 64*tp itself, and 0.5.0's
    checkpoint IO then fails on the padded tensors (optimizer save under tp: "parameter isn't evenly
    distributed"; ZeRO/pp: `_unpad_detach`). A model whose vocabulary is already a multiple is never
    padded there. No id reaches the new rows (the data uses the tokenizer's ids), so their embeddings
    are never read, and `mask_padded_logits` keeps them out of the softmax, so the loss is the unpadded
    vocabulary's (Megatron's and Colossal-AI's own padding leave them in, which shifts the loss by about
    log(padded/real) at the start). Works on LazyInitContext models (the ops are recorded).
    """
    config = model.config
    old = config.vocab_size
    new = -(-old // multiple) * multiple
    if new == old:
        return old
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight

    def padded(weight):
        return torch.nn.Parameter(torch.cat([weight.data, weight.data.new_zeros(new - old, weight.shape[1])]),
                                  requires_grad=weight.requires_grad)

    embeddings.weight = padded(embeddings.weight)
    embeddings.num_embeddings = new
    if head is not None:
        head.weight = embeddings.weight if tied else padded(head.weight)
        head.out_features = new
    setattr(config, UNPADDED_VOCAB_KEY, unpadded_vocab_size(config))
    config.vocab_size = new
    if hasattr(model, "vocab_size"):  # Mixtral's forward reshapes its logits by the size copied at init
        model.vocab_size = new
    # Under LazyInitContext the Booster loads the pretrained weights after sharding, and a checkpoint
    # may hold fewer rows (unpadded, or padded for a smaller tp): pad them on their way in.
    model.register_load_state_dict_pre_hook(_pad_rows_on_load)
    return new


def mask_padded_logits(model, tp_rank: int = 0) -> None:
    """Give the padding rows of the output vocabulary the lowest logit, so they take no share of the softmax
    (the loss equals an unpadded model's) and get no gradient. Call it on the model as it will run (after
    the Booster's shardformer replaced lm_head): under tensor parallelism each rank's logits are its slice
    of the vocabulary, starting at tp_rank * width."""
    real, padded = unpadded_vocab_size(model.config), model.config.vocab_size
    head = model.get_output_embeddings()
    if head is None or real >= padded:
        return

    def hook(module, args, logits):
        width = logits.shape[-1]
        start = tp_rank * width if width < padded else 0
        cut = max(0, min(width, real - start))
        if cut == width:
            return logits
        keep = torch.arange(width, device=logits.device) < cut
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)

    head.register_forward_hook(hook)


def _pad_rows_on_load(module, state_dict, prefix, *args) -> None:
    new = module.config.vocab_size
    for key in (prefix + "model.embed_tokens.weight", prefix + "lm_head.weight"):
        tensor = state_dict.get(key)
        if tensor is not None and tensor.shape[0] < new:
            state_dict[key] = torch.cat([tensor, tensor.new_zeros(new - tensor.shape[0], *tensor.shape[1:])])


def build_model(pretrained: str | None, model_config: str | None, seed: int, dtype: torch.dtype = torch.float32,
                lazy_ctx=None, attn_implementation: str = "sdpa", vocab_multiple: int = 1, rope: Optional[dict] = None):
    """Return the model on CPU; the plugin casts it to its precision and places it.

    Pretrained weights load in `dtype` (the training precision) to halve host memory on big models.
    A config-built model is created eagerly right after seeding, so every plugin starts from the same
    weights whatever it shards. `lazy_ctx` (Colossal-AI's LazyInitContext) is used for pretrained
    weights only, where it saves host memory on large models. The vocabulary is then padded to a
    multiple of `vocab_multiple` (`pad_vocabulary`); the real rows stay as built or loaded. `rope` (theta,
    scaling, factor: rope.apply's arguments) changes the RoPE of either before the model is made.
    """
    rope = {k: v for k, v in (rope or {}).items() if v is not None}
    if model_config is not None:
        torch.manual_seed(seed)
        config = rope_settings.apply(load_config(model_config), **rope)
        config._attn_implementation = attn_implementation
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        pad_vocabulary(model, vocab_multiple)
        return model
    if not os.path.isdir(pretrained):
        raise InputError(f"--pretrained {pretrained!r} is not a folder")
    extra = {"config": rope_settings.apply(AutoConfig.from_pretrained(pretrained), **rope)} if rope else {}
    with lazy_ctx or nullcontext():
        model = AutoModelForCausalLM.from_pretrained(
            pretrained, torch_dtype=dtype, attn_implementation=attn_implementation, use_safetensors=None, **extra
        )
        pad_vocabulary(model, vocab_multiple)
    return model
