"""Sparse upcycling: a dense Llama becomes a Mixtral whose every expert starts as the dense MLP.

    python -m colossal_hammer.model.upcycle --model DENSE_DIR --output_dir MOE_DIR --num_experts 8 --top_k 2

Each layer's MLP (gate_proj, up_proj, down_proj) is copied into every expert (w1, w3, w2); attention,
norms, embeddings and lm_head are copied as they are; the routers start small and random. Mixtral
renormalises the top-k routing weights to sum to 1, so with identical experts the upcycled model computes
what the dense one did (logits equal up to float rounding) until training lets the experts diverge.
Like the export, nothing is built: tensors stream from the dense safetensors into the Mixtral shards one
at a time, so a 7B → 8-expert upcycle needs memory for one tensor, not for 47B parameters. The dtype and
the tokenizer are kept; --model takes an HF folder or a checkpoint's step-N.
"""

from __future__ import annotations

import argparse
import re
from typing import List, Optional

from ..errors import InputError, check_output, command_name, run_json_cli, writing
from . import moe_configs as moe_models
from ..tokenizer.files import copy_tokenizer_files
from .export import DEFAULT_MAX_SHARD_SIZE, Source, save_config, trim_vocabulary
from .folders import hf_folder_of
from .shards import Entry, parse_size, write_shards

EXPERT = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
ROUTER = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$")
DENSE_OF = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
# carried from the Llama config; the rest of a MixtralConfig is MoE-specific or its default
CARRIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
           "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "attention_dropout",
           "bos_token_id", "eos_token_id", "pad_token_id")


def mixtral_config(dense, num_experts: int, top_k: int, aux_loss_coef: float):
    if dense.model_type != "llama":
        raise InputError(f"--model: a {dense.model_type} model; upcycling takes a dense Llama")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(dense, flag, False):
            raise InputError(f"--model: {flag} is true; Mixtral has no biases, so the copy would not be exact")
    carried = {k: getattr(dense, k) for k in CARRIED if getattr(dense, k, None) is not None}
    return moe_models.mixtral_config(dict(carried, num_local_experts=num_experts, num_experts_per_tok=top_k,
                                          router_aux_loss_coef=aux_loss_coef))


def plan(source: Source, config, target, seed: int, router_std: float) -> tuple:
    """The Mixtral on the meta device and, in its state_dict order, where each tensor comes from."""
    import torch
    from transformers import MixtralForCausalLM

    with torch.device("meta"):
        model = MixtralForCausalLM(config)
    entries: List[Entry] = []
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if router := ROUTER.match(key):
            layer = int(router.group(1))

            def produce(shape=shape, layer=layer):
                g = torch.Generator().manual_seed(seed * 100_003 + layer)
                return [(torch.randn(shape, generator=g) * router_std).to(target)]
        else:
            expert = EXPERT.match(key)
            origin = (f"model.layers.{expert.group(1)}.mlp.{DENSE_OF[expert.group(3)]}.weight" if expert else key)
            if origin not in source.where:
                raise InputError(f"--model: the dense weights have no {origin} (needed for {key})")
            stored = source.shapes[origin]
            if stored[1:] != shape[1:] or stored[0] < shape[0]:
                raise InputError(f"--model: {origin} has shape {list(stored)}, the Mixtral needs {list(shape)}")

            def produce(origin=origin, rows=shape[0] if shape else None):
                return (block.to(target) for block in source.read(origin, rows))
        entries.append(Entry(key, shape, target, produce))
    return model, entries


def upcycle(model_dir: str, output_dir: str, num_experts: int = 8, top_k: int = 2, router_std: float = 0.02,
            aux_loss_coef: float = 0.02, seed: int = 0, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> dict:
    dense_dir = hf_folder_of(model_dir, "--model")
    check_output(output_dir, "--output_dir", [model_dir])
    if not 1 <= top_k <= num_experts or num_experts < 2:
        raise InputError(f"--num_experts {num_experts} --top_k {top_k}: need 2 or more experts and 1 <= top_k <= "
                         "num_experts")
    if not router_std > 0 or not aux_loss_coef >= 0:  # NaN fails both comparisons
        raise InputError(f"--router_init_std {router_std} --router_aux_loss_coef {aux_loss_coef}: the std must be a "
                         "finite number > 0 and the coefficient >= 0")
    try:
        max_bytes = parse_size(max_shard_size)
    except ValueError as e:
        raise InputError(f"--max_shard_size {max_shard_size}: {e}") from None
    from transformers import AutoConfig

    dense = AutoConfig.from_pretrained(dense_dir)
    trim_vocabulary(dense)  # a 3d checkpoint's padded rows are left behind, as the export does
    source = Source(dense_dir)
    target = source.dtypes[next(iter(source.where))]
    config = mixtral_config(dense, num_experts, top_k, aux_loss_coef)
    model, entries = plan(source, config, target, seed, router_std)
    with writing(output_dir, "--output_dir"):
        files = write_shards(output_dir, entries, max_bytes)
        save_config(model, target, output_dir)
        copied = copy_tokenizer_files(dense_dir, output_dir)
    total = sum(e.nbytes for e in entries) // target.itemsize
    return {"output_dir": output_dir, "num_experts": num_experts, "top_k": top_k, "params": total,
            "active_params": moe_models.active_params(config, total), "dtype": str(target).replace("torch.", ""),
            "weight_files": files, "tokenizer_files": copied}


def main(argv: Optional[list] = None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Dense Llama: an HF folder or a checkpoint's step-N folder")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2, help="Experts each token is routed to")
    p.add_argument("--router_init_std", type=float, default=0.02, help="Std of the routers' random init")
    p.add_argument("--router_aux_loss_coef", type=float, default=0.02,
                   help="Load-balancing loss weight written into the config (Mixtral's published value)")
    p.add_argument("--seed", type=int, default=0, help="Seed of the routers' init")
    p.add_argument("--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE, help="Largest weights file written")
    args = p.parse_args(argv)

    return run_json_cli(lambda: upcycle(args.model, args.output_dir, args.num_experts, args.top_k,
                                        args.router_init_std, args.router_aux_loss_coef, args.seed,
                                        args.max_shard_size))


if __name__ == "__main__":
    main()
