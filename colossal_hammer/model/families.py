"""The dense model families besides Llama-2 that continual pretraining starts from today, at tiny shapes for
tests and rehearsals, and which of them Colossal-AI's shardformer (the 3d and moe plugins) can split.

The tiny presets keep each family's distinguishing parts at the `tiny` Llama's size: Qwen2's q/k/v biases
(and, as Qwen2.5 up to 3B, tied embeddings), Qwen3's q/k norms and explicit head_dim, Mistral's
sliding-window attention, Llama-3's RoPE base 500000 with its llama3 frequency scaling and, as Llama-3.2
1B and 3B, tied embeddings.
"""

from __future__ import annotations

_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048)

# Qwen2.5 and Qwen3 publish use_sliding_window false: full attention
_QWEN = dict(_TINY, use_sliding_window=False, sliding_window=None)

FAMILY_CONFIGS = {
    "tiny_qwen2": ("qwen2", dict(_QWEN, tie_word_embeddings=False)),
    "tiny_qwen2_tied": ("qwen2", dict(_QWEN, tie_word_embeddings=True)),
    "tiny_qwen3": ("qwen3", dict(_QWEN, head_dim=16, tie_word_embeddings=False)),
    "tiny_mistral": ("mistral", dict(_TINY, sliding_window=4096, tie_word_embeddings=False)),
    "tiny_llama3": ("llama", dict(_TINY, rope_theta=500000.0, tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 256})),
}

# model_type values a --model_config JSON may name for a dense model (MoE types: moe_configs.MOE_MODEL_TYPES).
DENSE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def family_config(model_type: str, values: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **values)


def has_shardformer_policy(model) -> bool:
    """Whether Colossal-AI's shardformer has a policy for this model class (what its 3d and moe plugins need)."""
    from colossalai.shardformer.policies.auto_policy import _POLICY_LIST

    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}" in _POLICY_LIST
