"""What attending within documents costs on CPU: forward+backward time and mask memory of one packed row.

Model: colossal_hammer's "small" config (SDPA, fp32, 1 thread). Each row of SEQ tokens holds documents
of SEQ/DOCS tokens. Compared: the old behaviour (causal over the whole row, SDPA's is_causal), the
bool document mask, and the additive fp32 mask (the form a GPU or sequence parallelism gets).
Usage: python bench/doc_attention.py [SEQ ...]   (default 512 2048; prints one line per case)
"""

import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from colossal_hammer.data.loader import PackedCollator
from colossal_hammer.model import doc_attention
from colossal_hammer.model.build import NAMED_CONFIGS
from colossal_hammer.model.doc_attention import DocumentAttention, document_mask
from colossal_hammer.training.metrics import attended_length

DOCS = 8
REPEATS = 3


def batch_of(seq: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
    lengths = [seq // DOCS] * DOCS
    return PackedCollator(pad_id=0)([{"input_ids": ids, "labels": ids, "doc_lengths": lengths, "num_padding": 0}])


def seconds(model, batch) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        model(**batch).loss.backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def main(seqs) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(**{**NAMED_CONFIGS["small"], "max_position_embeddings": max(seqs)})
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    for seq in seqs:
        batch = batch_of(seq, config.vocab_size)
        bool_mib = document_mask(batch["position_ids"], batch["attention_mask"]).numel() / 2**20
        cases = {"whole-row causal (old)": None, "document mask, bool": DocumentAttention("mask"),
                 "document mask, additive fp32": DocumentAttention("mask", additive=True)}
        for name, spec in cases.items():
            handle = doc_attention.install(model, spec) if spec else None
            t = seconds(model, batch)
            if handle:
                handle.remove()
            mask_mib = 0.0 if spec is None else bool_mib * (4 if spec.additive else 1)
            print(f"seq {seq:5d} docs {DOCS}: {name:30s} fwd+bwd {t * 1000:8.1f} ms   mask {mask_mib:6.1f} MiB per row",
                  flush=True)
        print(f"seq {seq:5d}: MFU attention length {attended_length(batch['position_ids']):.0f} "
              f"(whole row: {seq})", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [512, 2048])
