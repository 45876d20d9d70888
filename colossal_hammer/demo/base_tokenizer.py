"""Train a small Llama-style SentencePiece tokenizer and save it as an HF tokenizer folder.

Stands in for a real Llama tokenizer wherever nothing may be downloaded (tests, the demo): BPE with
byte fallback and split digits, `<unk>`/`<s>`/`</s>` at ids 0/1/2 as in Llama-2, loadable by
`AutoTokenizer.from_pretrained(dir)` both as the slow (sentencepiece) and the fast tokenizer.
"""

from __future__ import annotations

import io
from typing import Iterable

import sentencepiece as spm


def train_sentencepiece(texts: Iterable[str], vocab_size: int, character_coverage: float = 0.995,
                        seed_sentencepiece_size: int = 100_000) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",  # as Llama-2: what you feed is what is encoded, slow == fast
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=2,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=16384,
        minloglevel=2,
    )
    return model.getvalue()


def build_base_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 2000):
    """Train and save as an HF folder; returns the fast tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    from ..tokenizer.sentencepiece_io import save_hf_tokenizer

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(train_sentencepiece(texts, vocab_size))
    return save_hf_tokenizer(proto, out_dir)
