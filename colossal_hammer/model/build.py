"""Build the causal LM to train: from an HF folder, or from a config for rehearsal runs."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

# Named configs for runs without pretrained weights. Head counts are divisible by 2 and 4 so tensor
# parallelism can split them; vocab sizes are multiples of 64 for the same reason.
NAMED_CONFIGS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096),
}

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def load_config(spec: str) -> LlamaConfig:
    if spec in NAMED_CONFIGS:
        return LlamaConfig(**NAMED_CONFIGS[spec])
    if not os.path.isfile(spec):
        raise SystemExit(f"error: --model_config {spec!r} is neither {sorted(NAMED_CONFIGS)} nor a JSON file")
    with open(spec, encoding="utf-8") as f:
        return LlamaConfig(**json.load(f))


def build_model(pretrained: str | None, model_config: str | None, seed: int, dtype: torch.dtype = torch.float32,
                lazy_ctx=None, attn_implementation: str = "sdpa"):
    """Return the model on CPU; the plugin casts it to its precision and places it.

    Pretrained weights load in `dtype` (the training precision) to halve host memory on big models.
    A config-built model is created eagerly right after seeding, so every plugin starts from the same
    weights whatever it shards. `lazy_ctx` (Colossal-AI's LazyInitContext) is used for pretrained
    weights only, where it saves host memory on large models.
    """
    if model_config is not None:
        torch.manual_seed(seed)
        config = load_config(model_config)
        config._attn_implementation = attn_implementation
        return AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    if not os.path.isdir(pretrained):
        raise SystemExit(f"error: --pretrained {pretrained!r} is not a folder")
    with lazy_ctx or nullcontext():
        return AutoModelForCausalLM.from_pretrained(
            pretrained, torch_dtype=dtype, attn_implementation=attn_implementation, use_safetensors=None
        )
