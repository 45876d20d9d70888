"""The UTF-8 bytes each token id stands for: how bits per byte is counted on tokenized (prepared) data.

A prepared dataset keeps token ids, not text, so its byte count is the sum over the predicted tokens of
the bytes each one decodes to. Per token (not per decoded span) so that any slice of a packed row adds
up: a character split over byte-fallback pieces counts one byte per piece, as in the text.
- SentencePiece pieces: '▁' is a space ("▁the" is 4 bytes), `<0xNN>` byte-fallback pieces are 1 byte.
- byte-level BPE (GPT-2, Llama-3): each symbol of the piece is one byte of the text.
- special tokens (BOS, EOS, pad, unk): 0 bytes. Their loss still counts where they are labels (EOS).
The word-start '▁' of a SentencePiece text's first word counts as a space the raw text does not have,
and a prepared set's EOS labels count too, so its bits per byte differs a little from that of its raw
.jsonl (eval.perplexity on text files predicts no EOS).
"""

from __future__ import annotations

import json
import re

import numpy as np

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


def byte_lengths(tokenizer, size: int = 0) -> np.ndarray:
    """int64 array: bytes of token id i, for i < max(len(tokenizer), size) (ids past the tokenizer: 0)."""
    vocab = len(tokenizer)
    table = np.zeros(max(vocab, size), dtype=np.int64)
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    if _is_byte_level(tokenizer):
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

        symbols = set(bytes_to_unicode().values())
        for i, piece in enumerate(pieces):
            if i not in special and piece is not None:
                # symbols outside the byte alphabet: an added token written as plain text
                table[i] = sum(1 if ch in symbols else len(ch.encode("utf-8")) for ch in piece)
        return table
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        table[i] = 1 if _BYTE_PIECE.fullmatch(piece) else len(piece.replace("▁", " ").encode("utf-8"))
    return table
