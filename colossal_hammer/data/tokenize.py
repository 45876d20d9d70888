"""Tokenize the parts of a document separately, so no token straddles a part boundary.

Concatenating source and target as text and tokenizing once lets a token merge across the
boundary ("人工" + "智能" → "人工智能"), after which a mask computed from the source alone labels the
wrong tokens. Here each part is its own call; parts after the first are encoded as continuations,
without the dummy "▁" prefix SentencePiece tokenizers add at the start of a text.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from .packing import IGNORE_INDEX
from ..errors import InputError


def load_tokenizer(tokenizer_dir: str, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure to load is the same user mistake
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{tokenizer_dir}: tokenizer does not load: {first_line}") from None


def pad_id(tokenizer_dir: str) -> int:
    """The id that fills padding: the tokenizer's pad token, else EOS (padding is masked by length anyway)."""
    tok = load_tokenizer(tokenizer_dir)
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    return tok.eos_token_id if tok.eos_token_id is not None else 0


class PartTokenizer:
    def __init__(self, tokenizer_dir: str):
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.continuation = self.tokenizer
        if self.tokenizer.tokenize("a")[0].startswith("▁"):
            # SentencePiece-style: a text start gets a dummy "▁"; a continuation must not.
            self.continuation = load_tokenizer(tokenizer_dir, add_prefix_space=False)
            if self.continuation.tokenize("a")[0].startswith("▁"):
                raise InputError(f"{tokenizer_dir}: cannot encode text without a dummy prefix with this tokenizer")
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_id = self.tokenizer.eos_token_id

    def encode(self, texts: Sequence[str], first: bool) -> List[List[int]]:
        if not texts:
            return []
        tok = self.tokenizer if first else self.continuation
        return tok(list(texts), add_special_tokens=False)["input_ids"]

    def encode_parts(self, parts: Sequence[Sequence[str]]) -> List[List[List[int]]]:
        """For each document, the ids of each of its parts (part 0 as a text start, the rest as continuations).

        Batched by position so a batch costs two tokenizer calls, not one per part."""
        out = [[None] * len(doc) for doc in parts]
        width = max((len(doc) for doc in parts), default=0)
        for position in range(width):
            owners = [i for i, doc in enumerate(parts) if len(doc) > position]
            for i, ids in zip(owners, self.encode([parts[i][position] for i in owners], first=position == 0)):
                out[i][position] = ids
        return out

    def pretrain_example(self, source_ids: List[int], target_ids: List[int]) -> Tuple[List[int], List[int]]:
        """BOS + source + target + EOS; loss on target and EOS only."""
        head = [self.bos_id] if self.bos_id is not None else []
        tail = [self.eos_id] if self.eos_id is not None else []
        ids = head + source_ids + target_ids + tail
        labels = [IGNORE_INDEX] * (len(head) + len(source_ids)) + target_ids + tail
        return ids, labels
