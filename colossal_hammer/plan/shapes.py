"""The model's shape, read from a config alone (no weights, no torch), and its parameter counts by part.

Counts follow transformers' LlamaForCausalLM exactly (tests/plan/test_shapes.py compares them with a
built model), so the memory model starts from the same numbers the real run allocates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import InputError
from ..model.moe_configs import MOE_CONFIGS, MOE_MODEL_TYPES

# LlamaConfig's defaults, for keys a config.json leaves out.
DEFAULTS = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=None, vocab_size=32000, max_position_embeddings=2048,
                tie_word_embeddings=False, attention_bias=False, mlp_bias=False, head_dim=None)


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int
    tied: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_dict(cls, raw: dict) -> "Shape":
        c = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
        heads = c["num_attention_heads"]
        return cls(hidden=c["hidden_size"], intermediate=c["intermediate_size"], layers=c["num_hidden_layers"],
                   heads=heads, kv_heads=c["num_key_value_heads"] or heads,
                   head_dim=c["head_dim"] or c["hidden_size"] // heads, vocab=c["vocab_size"],
                   max_positions=c["max_position_embeddings"], tied=bool(c["tie_word_embeddings"]),
                   attention_bias=bool(c["attention_bias"]), mlp_bias=bool(c["mlp_bias"]))

    def padded_vocab(self, multiple: int) -> int:
        return -(-self.vocab // multiple) * multiple

    # ---- parameter counts (elements) ----
    def layer_matrices(self) -> int:
        """Elements of one decoder layer that tensor parallelism splits (attention and MLP weights, biases)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = h * q + 2 * h * kv + q * h + (q + 2 * kv + h if self.attention_bias else 0)
        mlp = 3 * h * self.intermediate + (2 * self.intermediate + h if self.mlp_bias else 0)
        return attention + mlp

    def layer_norms(self) -> int:
        """Elements of one layer that every tp rank holds whole (the two RMSNorms)."""
        return 2 * self.hidden

    def embedding(self, vocab_multiple: int = 1) -> int:
        return self.padded_vocab(vocab_multiple) * self.hidden

    def head(self, vocab_multiple: int = 1) -> int:
        return 0 if self.tied else self.embedding(vocab_multiple)

    def total(self, vocab_multiple: int = 1) -> int:
        return (self.embedding(vocab_multiple) + self.head(vocab_multiple) + self.hidden
                + self.layers * (self.layer_matrices() + self.layer_norms()))

    def linear_shapes(self) -> dict:
        """(in, out) features of each linear layer of a decoder layer, by its module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def lora_elements(self, rank: int, targets, modules_to_save=()) -> tuple:
        """(adapter elements, elements of the trained copies peft makes of modules_to_save): r x (in + out)
        per targeted linear per layer; a saved module is copied whole (its original stays, frozen)."""
        linears = self.linear_shapes()
        adapters = self.layers * sum(rank * sum(linears[t]) for t in targets if t in linears)
        whole = {"embed_tokens": self.embedding(), "lm_head": self.head() or self.embedding()}
        whole.update({name: self.layers * a * b for name, (a, b) in linears.items()})
        return adapters, sum(whole.get(name, 0) for name in modules_to_save)

    def tensor_sizes(self, vocab_multiple: int = 1) -> list:
        """Every parameter's element count in model.parameters() order (Gemini packs chunks in it)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        bias = self.attention_bias
        attention = [h * q, *[q] * bias, h * kv, *[kv] * bias, h * kv, *[kv] * bias, q * h, *[h] * bias]
        mb = self.mlp_bias
        mlp = [h * i, *[i] * mb, h * i, *[i] * mb, i * h, *[h] * mb]
        layer = attention + mlp + [h, h]
        sizes = [self.embedding(vocab_multiple)] + layer * self.layers + [h]
        return sizes + ([self.head(vocab_multiple)] if not self.tied else [])


# The memory and time models count a dense Llama; experts split over --ep and their all_to_all are not in them.
MOE_NOT_PLANNED = ("a mixture-of-experts model: the planner models dense Llama models only (experts split over --ep "
                   "and their all_to_all traffic are not modelled yet)")


def load_shape(cfg) -> Shape:
    """The shape of the model a TrainConfig names: a preset, a LlamaConfig JSON, or an HF folder's
    config.json (the weights are never read)."""
    if cfg.model_config is not None:
        from ..model.build import NAMED_CONFIGS

        if cfg.model_config in NAMED_CONFIGS:
            return Shape.from_dict(NAMED_CONFIGS[cfg.model_config])
        raw = MOE_CONFIGS.get(cfg.model_config) or _read_json(
            cfg.model_config, "--model_config", f"neither a preset ({', '.join(NAMED_CONFIGS)}) nor a JSON file")
        return Shape.from_dict(_dense(raw, f"--model_config {cfg.model_config}"))
    flag, folder = ("--pretrained", cfg.pretrained) if cfg.pretrained else ("--load_weights_only", cfg.load_weights_only)
    if os.path.isdir(os.path.join(folder, "modeling")):  # a checkpoint's step-N folder
        folder = os.path.join(folder, "modeling")
    raw = _read_json(os.path.join(folder, "config.json"), flag, "no config.json in it; give an HF model folder")
    # A checkpoint's config holds the padded vocabulary; the planner pads for the planned layout itself.
    raw["vocab_size"] = raw.get("unpadded_vocab_size") or raw.get("vocab_size")
    return Shape.from_dict(_dense(raw, f"{flag} {folder}"))


def _dense(raw: dict, where: str) -> dict:
    if raw.get("model_type") in MOE_MODEL_TYPES or "num_local_experts" in raw:
        raise InputError(f"{where}: {MOE_NOT_PLANNED}")
    return raw


def _read_json(path: str, flag: str, missing: str) -> dict:
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: {missing}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise InputError(f"{path}:{getattr(e, 'lineno', 1)}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
