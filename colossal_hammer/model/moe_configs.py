"""Which models are mixtures of experts, their named shapes, and how many parameters a token meets."""

from __future__ import annotations

# Mixtral-style presets for --model_config: every MLP is `num_local_experts` experts of which a token
# meets `num_experts_per_tok`. Expert counts divide by 2 and 4 so expert parallelism can split them.
MOE_CONFIGS = {
    "tiny_moe": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048,
                     num_local_experts=4, num_experts_per_tok=2),
    # Published shape (mistralai/Mixtral-8x7B-v0.1 config.json), for planning and shape rehearsals.
    "mixtral-8x7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
                         rope_theta=1e6, rms_norm_eps=1e-5, num_local_experts=8, num_experts_per_tok=2),
}

MOE_MODEL_TYPES = ("mixtral",)


def mixtral_config(values: dict):
    from transformers import MixtralConfig

    # sliding_window: Mixtral's attention is full (its published config has null); the class default is 4096
    return MixtralConfig(**{"sliding_window": None, **values})


def is_moe(config) -> bool:
    return getattr(config, "model_type", None) in MOE_MODEL_TYPES


def expert_params(config) -> int:
    """Parameters of one expert (w1, w3: hidden x intermediate; w2: intermediate x hidden)."""
    return 3 * config.hidden_size * config.intermediate_size


def active_params(config, num_params: int) -> int:
    """Parameters one token computes with: all but the experts its router did not pick (top-k of E per layer).
    MFU counts these, as a dense model's all."""
    if not is_moe(config):
        return num_params
    idle = config.num_local_experts - config.num_experts_per_tok
    return num_params - config.num_hidden_layers * idle * expert_params(config)
