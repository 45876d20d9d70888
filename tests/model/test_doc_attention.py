"""Packed rows attend within documents: a packed row's loss is its documents' loss run one by one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.modeling_attn_mask_utils import AttentionMaskConverter

from colossal_hammer.data.loader import PackedCollator
from colossal_hammer.data.packing import IGNORE_INDEX
from colossal_hammer.model import doc_attention
from colossal_hammer.model.doc_attention import DocumentAttention, attention_pairs, document_mask
from colossal_hammer.training.metrics import training_flops

VOCAB = 97
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): a random model that barely reads its context would let a
    # missing mask pass unseen; here documents seeing each other moves the loss by ~2.5 %.
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()


def documents(seed=1):
    """Documents of different lengths; the second has a context part without loss (as SFT/pretrain rows do)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 14, 5, 11, 3]
    docs = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        labels = list(ids)
        if i == 1:
            labels[:6] = [IGNORE_INDEX] * 6
        docs.append((ids, labels))
    return docs


def pack(docs, width):
    """One packed row per group of documents, the last padded: as data/packing.Packer leaves them."""
    ids = [t for d, _ in docs for t in d]
    labels = [t for _, lab in docs for t in lab]
    padding = width - len(ids)
    return {"input_ids": ids + [0] * padding, "labels": labels + [IGNORE_INDEX] * padding,
            "doc_lengths": [len(d) for d, _ in docs], "num_padding": padding}


def one_by_one(model, docs):
    """Sum of per-token losses over every document run alone, and the number of predicted tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in docs:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            target = torch.tensor(labels[1:])
            total += float(F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((target != IGNORE_INDEX).sum())
    return total / count


def packed_batch(docs):
    return PackedCollator(pad_id=0)([pack(docs[:3], 32), pack(docs[3:], 32)])


def loss_of(model, batch, spec=None):
    handle = doc_attention.install(model, spec) if spec else None
    try:
        with torch.no_grad():
            return float(model(**batch).loss)
    finally:
        if handle:
            handle.remove()


@pytest.mark.parametrize("additive", [False, True], ids=["bool", "additive"])
def test_packed_loss_equals_documents_one_by_one(model, additive):
    docs = documents()
    batch = packed_batch(docs)
    expected = one_by_one(model, docs)
    masked = loss_of(model, batch, DocumentAttention("mask", additive=additive))
    assert abs(masked - expected) <= 1e-5 * abs(expected), (masked, expected)
    # Without the mask the same rows give another loss: documents see each other.
    unmasked = loss_of(model, batch)
    assert abs(unmasked - expected) > 1e-2 * abs(expected), (unmasked, expected)


def test_single_document_rows_keep_the_plain_causal_path(model):
    """Rows of one document and no padding are left to SDPA's is_causal (no mask built), same loss."""
    docs = documents()
    batch = PackedCollator(pad_id=0)([pack(docs[1:2], 14)])
    seen = []
    probe = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"]),
                                                  with_kwargs=True)
    try:
        loss = loss_of(model, batch, DocumentAttention("mask"))
    finally:
        probe.remove()
    assert seen[0].dim() == 2
    assert abs(loss - one_by_one(model, docs[1:2])) <= 1e-5 * loss


def test_padding_gives_finite_gradients(model):
    """Backward through a padded packed row stays finite. (Padding is a block of its own, so no query row
    is fully masked; torch 2.13's CPU kernel copes with such rows, CUDA's memory-efficient one may not.)"""
    batch = packed_batch(documents())
    handle = doc_attention.install(model, DocumentAttention("mask"))
    try:
        model.zero_grad()
        model(**batch).loss.backward()
    finally:
        handle.remove()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_mask_blocks_and_padding():
    # row 0: documents of 3 and 2 tokens, then 1 padding token; row 1: one document of 6
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1] * 6])
    mask = document_mask(position_ids, attention_mask)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    row0 = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only padding; nothing real sees it
    ], dtype=torch.bool)
    assert torch.equal(mask[0, 0], row0)
    assert torch.equal(mask[1, 0], torch.ones(6, 6, dtype=torch.bool).tril())
    additive = document_mask(position_ids, attention_mask, torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, mask)
    assert (additive[~mask] == torch.finfo(torch.bfloat16).min).all()
    # On a GPU, HF's SDPA path passes the mask through _unmask_unattended: it must come out unchanged.
    # (Under CUDA autocast over fp32 weights the mask is bf16 and HF compares it with fp32's minimum.)
    for dtype, hf_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                            (torch.bfloat16, torch.float32)):
        m = document_mask(position_ids, attention_mask, dtype)
        assert torch.equal(AttentionMaskConverter._unmask_unattended(m.clone(), torch.finfo(hf_dtype).min), m)


def test_varlen_and_continuous_modes_rewrite_the_call(model):
    batch = packed_batch(documents())
    seen = {}

    def probe(module, args, kwargs):
        seen.update(attention_mask=kwargs["attention_mask"], position_ids=kwargs["position_ids"])

    inner = model.model.register_forward_pre_hook(probe, with_kwargs=True)
    try:
        loss_of(model, batch, DocumentAttention("varlen"))
        assert seen["attention_mask"] is None  # HF flash_attention_2 then cuts documents at position 0
        assert torch.equal(seen["position_ids"], batch["position_ids"])
        loss_of(model, batch, DocumentAttention("continuous"))
        assert torch.equal(seen["attention_mask"], batch["attention_mask"])
        assert seen["position_ids"].tolist() == [list(range(32))] * 2
        loss_of(model, batch, DocumentAttention("off"))
        assert torch.equal(seen["position_ids"], batch["position_ids"])
    finally:
        inner.remove()
    with pytest.raises(ValueError, match="not one of"):
        DocumentAttention("flash")


def test_attention_flops_count_documents():
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7]])
    attention_mask = torch.tensor([[1] * 7 + [0], [1] * 8])
    # row 0: documents of 4 and 3 (one padding token), row 1: one document of 8
    assert attention_pairs(position_ids, attention_mask) == 16 + 9 + 64
    assert attention_pairs(position_ids, attention_mask, within_documents=False) == 49 + 64
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2)
    # 6N per token plus 12 * layers * hidden per query-key pair
    assert training_flops(config, 1000, 15, 89) == 6 * 1000 * 15 + 12 * 2 * 64 * 89


def test_each_plugin_gets_the_form_its_attention_takes(monkeypatch):
    from colossal_hammer.training import components
    from colossal_hammer.training.config import TrainConfig

    def spec(**kw):
        return components.document_attention(TrainConfig(model_config="tiny", benchmark=True, **kw))

    for plugin in ("ddp", "zero2", "zero2_cpu", "gemini", "3d"):
        assert spec(plugin=plugin) == DocumentAttention("mask")
    assert spec(plugin="ddp", use_flash_attn=True) == DocumentAttention("mask")  # no GPU here: SDPA
    assert spec(plugin="3d", tp=2, pp=2) == DocumentAttention("mask")
    assert spec(plugin="3d", sp=2, enable_sequence_parallelism=True, sp_mode="all_to_all") == DocumentAttention(
        "mask", additive=True)
    assert spec(plugin="3d", use_flash_attn=True) == DocumentAttention("continuous")
    monkeypatch.setattr(components, "attention_implementation", lambda cfg: "flash_attention_2")
    assert spec(plugin="zero2", use_flash_attn=True) == DocumentAttention("varlen")
    assert spec(plugin="3d", tp=2, use_flash_attn=True) == DocumentAttention("continuous")
    assert not DocumentAttention("continuous").within_documents and DocumentAttention("varlen").within_documents


# ---- under Colossal-AI's shardformer: 2 real processes, one forward of a fixed packed batch -------------
WORKER = Path(__file__).with_name("doc_attention_worker.py")
# A tiny Llama whose loss moves by ~2 % when documents see each other (initializer_range 0.2).
PLUGIN_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, initializer_range=0.2)


@pytest.fixture(scope="module")
def plugin_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(PLUGIN_MODEL))
    return path


def run_worker(tmp_path, rows, flags):
    out = tmp_path / "losses.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(out), rows, *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return json.loads(out.read_text())


def reference_losses(config_path, rows):
    """In one process, plain HF: (masked token mean, masked mean of row means, causal unmasked, bidirectional)."""
    from colossal_hammer.model.build import build_model
    from tests.model.doc_attention_worker import packed_batch

    model = build_model(None, str(config_path), 42).eval()
    batch = packed_batch(PLUGIN_MODEL["vocab_size"], rows)
    masked = loss_of(model, batch, DocumentAttention("mask"))
    row_means = [loss_of(model, {k: v[i : i + 1] for k, v in batch.items()}, DocumentAttention("mask")) for i in range(2)]
    s = batch["input_ids"].shape[1]
    everything = {**batch, "attention_mask": torch.ones(2, 1, s, s, dtype=torch.bool)}
    return masked, sum(row_means) / 2, loss_of(model, batch), loss_of(model, everything)


def close(a, b, rel=1e-5):
    return abs(a - b) <= rel * abs(b)


def test_3d_tp2_keeps_the_document_mask(plugin_model, tmp_path):
    """tp=2: HF's attention under the shardformer's LlamaModel forward takes the bool 4-D mask as it is."""
    masked, _, unmasked, _ = reference_losses(plugin_model, "padded")
    assert not close(unmasked, masked, 1e-2)
    got = run_worker(tmp_path, "padded", ["--model_config", plugin_model, "--plugin", "3d", "--tp", "2",
                                          "--mixed_precision", "fp32"])
    assert got["owners"] == [True, False]
    assert close(got["losses"][0], masked), (got, masked)
    assert close(got["losses"][1], masked), (got, masked)  # tp ranks compute the same loss


@pytest.mark.slow
def test_3d_pp2_keeps_the_document_mask(plugin_model, tmp_path):
    """pp=2: each stage builds the mask from its micro-batch's position ids (micro-batch 1: mean of row means)."""
    _, row_means, _, _ = reference_losses(plugin_model, "padded")
    got = run_worker(tmp_path, "padded", ["--model_config", plugin_model, "--plugin", "3d", "--pp", "2",
                                          "--batch_size", "2", "--microbatch_size", "1", "--mixed_precision", "fp32"])
    assert got["owners"] == [False, True] and got["losses"][0] is None
    assert close(got["losses"][1], row_means), (got, row_means)


SP_MODES = {
    # The last sp rank's loss: with gathered logits (parallel_output=False) Colossal-AI 0.5.0's
    # dist_cross_entropy shifts labels on the last sp rank only under all_to_all, so rank 0 scores
    # unshifted labels (its loss is checked nowhere here).
    "all_to_all": (["--sp", "2", "--sp_mode", "all_to_all"], [1]),
    "split_gather": (["--tp", "2", "--sp_mode", "split_gather"], [0, 1]),  # the tp group is the sp group
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(SP_MODES))
def test_3d_sequence_parallel_is_causal_and_per_document(plugin_model, tmp_path, mode):
    """Sequence parallelism replaces HF's attention by Colossal-AI's, which adds the mask to the scores: it
    gets the additive form. Rows without padding: left to itself it would attend to every token, future
    ones included (HF drops an all-ones 2-D mask for SDPA's is_causal, which that forward never sets)."""
    masked, _, causal, bidirectional = reference_losses(plugin_model, "full")
    flags, ranks = SP_MODES[mode]
    got = run_worker(tmp_path, "full", ["--model_config", plugin_model, "--plugin", "3d", *flags,
                                        "--enable_sequence_parallelism", "--mixed_precision", "fp32"])
    for rank in ranks:
        loss = got["losses"][rank]
        assert close(loss, masked), (got, masked)
        assert not close(loss, causal, 1e-3) and not close(loss, bidirectional, 1e-3)
