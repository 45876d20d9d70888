"""Attention that stays inside each document of a packed row.

The collator restarts position ids at every document piece, so a 0 in `position_ids` marks where a
document begins: the ids alone say where the blocks are, and the batch needs no other key. A forward
pre-hook on the causal LM turns them into what the attention kernel in use understands:

- `mask`: a block-diagonal causal 4-D mask (b, 1, s, s). Bool where it reaches torch's SDPA through
  HF's path on CPU (passed through untouched, valid for any query dtype, 1 byte a pair); additive
  (0 / finfo.min, in the compute dtype) where the consumer adds it to the scores (Colossal-AI's
  sequence-parallel attention) or on a GPU, where HF's `_unmask_unattended` refuses a bool mask.
  Padding forms a block of its own: no real token sees it, and no query row is fully masked (which
  SDPA's memory-efficient CUDA kernel turns into NaN: HF's `_unmask_unattended` exists for that).
- `varlen`: the attention mask is dropped, so HF's flash_attention_2 cuts the row into documents
  from the position ids (`flash_attn_varlen_func`). Trailing padding continues the last document's
  positions, so it sits after every real token and no real token attends to it.
- `continuous`: the kernel takes only a padding mask (Colossal-AI's ColoAttention), so documents see
  each other; positions then run 0..s-1 along the row, distances that do occur at inference.
- `off`: the call is left alone.

The mask is built in the model call, not in the collator: the DataLoader and the host-to-device copy
carry O(b*s) ids instead of O(b*s^2) mask entries, the mask is made on the device after the pipeline
has split micro-batches, and the training loop keeps reading the 2-D mask for its token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

MODES = ("mask", "varlen", "continuous", "off")


@dataclass(frozen=True)
class DocumentAttention:
    mode: str
    additive: bool = False  # mode "mask": an additive float mask even on CPU (the consumer adds it to the scores)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"document attention mode {self.mode!r} is not one of {MODES}")

    @property
    def within_documents(self) -> bool:
        """Whether a token attends to its own document only (what MFU counts)."""
        return self.mode in ("mask", "varlen")


def segment_ids(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(b, s) index of each token's document within its row, counted from 0; -1 on padding."""
    starts = position_ids == 0
    starts[:, 0] = True  # a row always opens a block, whatever its first position id
    seg = torch.cumsum(starts, dim=1) - 1
    if attention_mask is not None:
        seg = seg.masked_fill(attention_mask == 0, -1)
    return seg


def document_mask(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """(b, 1, s, s) block-diagonal causal mask: bool (True = attend) when `dtype` is None, else additive
    (0 where attended, the dtype's finite minimum elsewhere)."""
    seg = segment_ids(position_ids, attention_mask)
    s = seg.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=seg.device).tril_()
    allowed = (seg[:, :, None] == seg[:, None, :]).logical_and_(causal).unsqueeze(1)
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def block_lengths(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                  within_documents: bool = True) -> torch.Tensor:
    """Lengths of the blocks real tokens attend within: documents, or each row's real part."""
    if within_documents:
        seg = segment_ids(position_ids, attention_mask)
    else:
        seg = torch.zeros_like(position_ids) if attention_mask is None else (attention_mask != 0).long() - 1
    rows, width = seg.shape
    flat = (seg + torch.arange(rows, device=seg.device)[:, None] * width)[seg >= 0]
    counts = torch.bincount(flat, minlength=rows * width)
    return counts[counts > 0]


def attention_pairs(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    within_documents: bool = True) -> int:
    """Sum over blocks of length^2: the query-key pairs attention is computed for (PaLM's count, which
    does not halve for causality), for the training loop's MFU."""
    return int((block_lengths(position_ids, attention_mask, within_documents) ** 2).sum())


def _single_block_rows(position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> bool:
    """Every row one document, no padding: plain causal attention is already right."""
    no_restart = bool((position_ids[:, 1:] != 0).all())
    return no_restart and (attention_mask is None or bool((attention_mask != 0).all()))


def _compute_dtype(module: torch.nn.Module, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def install(model: torch.nn.Module, spec: DocumentAttention):
    """Hook `model`'s calls (keyword arguments, as `model(**batch)`) to attend per document. Returns the
    hook's handle (`.remove()` undoes it). Calls without `position_ids` are left alone."""

    def hook(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        if position_ids is None or spec.mode == "off":
            return None
        attention_mask = kwargs.get("attention_mask")
        if spec.mode == "continuous":
            width = position_ids.shape[1]
            kwargs["position_ids"] = torch.arange(width, device=position_ids.device).expand_as(position_ids)
        elif spec.mode == "varlen":
            kwargs["attention_mask"] = None
        else:
            if attention_mask is not None and attention_mask.dim() != 2:
                return None  # the caller built its own mask
            if not spec.additive and _single_block_rows(position_ids, attention_mask):
                return None  # HF then calls SDPA with is_causal=True (its fastest kernels)
            additive = spec.additive or position_ids.device.type != "cpu"
            dtype = _compute_dtype(module, position_ids.device) if additive else None
            kwargs["attention_mask"] = document_mask(position_ids, attention_mask, dtype)
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)
