"""The pieces a Trainer is built from, each from the config alone: model, optimizer, data."""

from __future__ import annotations

import importlib.util
import os
from typing import Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..data.loader import BinnedDataset, BucketSampler, IndexedDataset, PackedCollator
from ..data.random_data import RandomTokenDataset
from ..errors import InputError
from ..model.build import build_model
from ..model.folders import hf_folder_of
from ..model.doc_attention import DocumentAttention
from ..model.doc_attention import install as install_document_attention
from .config import TrainConfig
from .plugins import check_model_supported
from ..rules import vocab_multiple


def weights_source(cfg: TrainConfig) -> Tuple[Optional[str], Optional[str]]:
    """(HF folder to load weights from, model config name) for this run.

    `--load_weights_only` takes a checkpoint's step-N folder (whose modeling/ is an HF folder) or an HF
    folder, chosen by what is on disk, never by a substring of the path."""
    if cfg.load_weights_only:
        return hf_folder_of(cfg.load_weights_only, "--load_weights_only"), None
    return cfg.pretrained, cfg.model_config


def model_config_of(cfg: TrainConfig):
    """The HF config of the model this run trains, read without building it."""
    from ..model.build import load_config

    weights_dir, model_config = weights_source(cfg)
    if model_config is not None:
        return load_config(model_config)
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(weights_dir, "config.json")):
        raise InputError(f"--pretrained {weights_dir}: no config.json (an HF model folder has one)")
    try:
        return AutoConfig.from_pretrained(weights_dir)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"--pretrained {weights_dir}/config.json: {e}") from None


def tokenizer_folder(weights_dir: Optional[str]) -> Optional[str]:
    """The folder holding the run's tokenizer, if the weights came with one."""
    if weights_dir and any(os.path.isfile(os.path.join(weights_dir, n)) for n in ("tokenizer.json", "tokenizer.model")):
        return weights_dir
    return None


def eval_tokenizer(cfg: TrainConfig) -> Optional[str]:
    """The tokenizer whose tokens' bytes give the eval sets' bits per byte: the flag's, else the model's own."""
    return cfg.eval_tokenizer_dir or tokenizer_folder(weights_source(cfg)[0])


def attention_implementation(cfg: TrainConfig) -> str:
    """flash_attention_2 when asked for and possible (a GPU and the flash-attn package), else SDPA."""
    if cfg.use_flash_attn and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if cfg.plugin == "3d" and cfg.enable_sequence_parallelism and not cfg.use_flash_attn:
        # The shardformer's sequence-parallel attention applies whatever mask the model builds; under
        # SDPA, HF builds none for unpadded rows (it relies on is_causal), so attention would see
        # the future. Eager always builds the causal mask (tests/training/test_3d.py).
        return "eager"
    return "sdpa"


def document_attention(cfg: TrainConfig) -> DocumentAttention:
    """How packed rows attend per document under this run's plugin and kernel (model/doc_attention.py).

    Mirrors plugins.build_plugin: plugin 3d hands `--use_flash_attn` to Colossal-AI's shardformer
    (ColoAttention, which takes a padding mask only) and, with sequence parallelism, replaces HF's
    attention forward by its own, which adds a given 4-D mask to the scores."""
    if cfg.plugin == "3d" and cfg.use_flash_attn:
        return DocumentAttention("continuous")
    if cfg.plugin == "3d" and cfg.enable_sequence_parallelism:
        return DocumentAttention("mask", additive=True)
    if attention_implementation(cfg) == "flash_attention_2":
        return DocumentAttention("varlen")
    return DocumentAttention("mask")


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def make_model(cfg: TrainConfig, dtype: torch.dtype, lazy_ctx) -> torch.nn.Module:
    weights_dir, model_config = weights_source(cfg)
    model = build_model(weights_dir, model_config, cfg.seed, dtype=dtype, lazy_ctx=lazy_ctx,
                        attn_implementation=attention_implementation(cfg), vocab_multiple=vocab_multiple(cfg),
                        rope=dict(theta=cfg.rope_theta, scaling=cfg.rope_scaling, factor=cfg.rope_factor))
    check_model_supported(cfg, model)
    spec = document_attention(cfg)
    if spec.mode == "continuous" and _is_rank0():
        print("warning: --plugin 3d --use_flash_attn: Colossal-AI's flash attention takes no document boundaries; "
              "packed rows use continuous position ids and documents attend to each other", flush=True)
    install_document_attention(model, spec)
    if cfg.freeze_non_embeds_params:
        trainable = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    if cfg.use_grad_checkpoint:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms' gains and biases (1-D tensors) are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    from colossalai.nn.optimizer import HybridAdam

    return HybridAdam(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, adamw_mode=True)


def make_data(cfg: TrainConfig, vocab_size: int, dp_size: int, dp_rank: int):
    """(dataset, sampler, dataloader). The sampler is ours for datasets and random tokens alike, so the
    sample order is the same for every plugin and data-parallel size, and its state is exact."""
    if cfg.dataset:
        dataset = BinnedDataset(cfg.dataset)
        pad_id = dataset.pad_id
        if cfg.task == "dpo":
            dataset = IndexedDataset(dataset)
    else:
        dataset = RandomTokenDataset(cfg.num_samples, cfg.max_length, vocab_size, seed=cfg.seed)
        pad_id = 0
    sampler = BucketSampler(dataset, dp_size, dp_rank, seed=cfg.seed, category_weights=cfg.weights_by_category())
    collator = PackedCollator(pad_id, cfg.max_length if cfg.padding_mode == "max_length" else None)
    # its own generator: each iterator draws a base seed, which from the global RNG would shift the dropout
    # and NEFTune noise of a resumed run (it makes its iterator at the checkpoint, not at the epoch's start)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    return dataset, sampler, loader
