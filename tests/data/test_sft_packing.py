"""prepare_sft_dataset.py --pack keeps every conversation whole: each piece of a packed row is exactly the row
the same conversation gets unpacked, from its first token, labels included; a document longer than a row is
never cut but skipped and counted (or an error naming file and line)."""

import random

import pytest
from datasets import load_from_disk

from colossal_hammer.data import corpora
from colossal_hammer.data.prepare import PrepareConfig, run_prepare
from colossal_hammer.data.pretrain import PretrainWorker
from colossal_hammer.data.sft import main as prepare_sft
from colossal_hammer.data.tokenize import pad_id
from colossal_hammer.errors import InputError
from tests.conftest import write_jsonl

MAX_LENGTH = 400


def conversations(seed, n):
    """Conversations of random length (1-3 exchanges of random-length real text), Chinese and English."""
    rng = random.Random(seed)
    texts = [s for sentences in corpora.chinese_news().values() for s in sentences[:40]]
    texts += corpora.english_paragraphs()[:400]

    def text():
        t = rng.choice(texts)
        return t[: rng.randrange(5, 80)]

    out = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randrange(1, 4)):
            messages += [{"from": "human", "content": text()}, {"from": "assistant", "content": text()}]
        out.append({"messages": messages, "category": rng.choice(["chat", "qa"])})
    return out


def prepared(tmp_path, tokenizer_dir, name, *extra):
    manifest = prepare_sft(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir,
                            "--data_output_dirs", str(tmp_path / name), "--num_spliced_dataset_bins", "2",
                            "--max_length", str(MAX_LENGTH), "--num_workers", "1", "--on_error", "skip", *extra])
    rows = []
    for figures in manifest["categories"].values():
        for k in range(2):
            rows.extend(load_from_disk(str(tmp_path / name / figures["dirname"] / f"bin-{k:05d}")))
    return manifest, rows


def test_every_packed_piece_is_a_whole_conversation(tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "in" / "chat.jsonl", conversations(0, 150))
    plain_manifest, plain = prepared(tmp_path, tokenizer_dir, "plain")
    manifest, packed = prepared(tmp_path, tokenizer_dir, "packed", "--pack")
    whole = sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in plain)
    # the test can fail: packed one after another, some conversations would cross a row boundary
    lengths = [len(r["input_ids"]) for r in plain]
    ends = [sum(lengths[: i + 1]) for i in range(len(lengths))]
    assert sum(1 for s, e in zip([0] + ends, ends) if s // MAX_LENGTH != (e - 1) // MAX_LENGTH) > 10
    pieces = []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == MAX_LENGTH
        start = 0
        for n in row["doc_lengths"]:
            pieces.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
        assert start + row["num_padding"] == MAX_LENGTH
        assert set(row["labels"][start:]) <= {-100}
    assert sorted(pieces) == whole  # each conversation once, whole, from its first token
    totals = manifest["totals"]
    assert totals["tokens_in"] == totals["tokens_out"] == sum(lengths) == plain_manifest["totals"]["tokens_out"]
    assert totals["rows"] * MAX_LENGTH == totals["tokens_out"] + totals["padding"]
    assert all(c["chunked_documents"] == 0 for c in manifest["categories"].values())
    assert totals["rows"] < len(plain) // 2 and totals["padding"] < 0.1 * totals["rows"] * MAX_LENGTH
    assert manifest["settings"]["packing"].startswith("whole documents")
    # the same output again, byte for byte
    again, _ = prepared(tmp_path, tokenizer_dir, "again", "--pack")
    assert again["output_hash"] == manifest["output_hash"]


def test_a_document_longer_than_a_row_is_skipped_and_counted_or_named(tokenizer_dir, tmp_path):
    # SFT's worker already ends a conversation at the last whole exchange that fits; the guard in the pipeline
    # is driven here by pretraining documents, which come back from their worker at any length
    long_text = " ".join(corpora.english_paragraphs()[:6])
    write_jsonl(tmp_path / "in" / "docs.jsonl", [{"target": "short text"}, {"target": long_text},
                                                 {"target": "another short one"}])
    cfg = dict(data_input_dirs=str(tmp_path / "in"), tokenizer_dir=tokenizer_dir, max_length=64, num_workers=1,
               num_spliced_dataset_bins=1, pack=True, whole_documents=True)
    describe = lambda: (pad_id(tokenizer_dir), {})  # noqa: E731
    manifest = run_prepare(PrepareConfig(**cfg, data_output_dirs=str(tmp_path / "out"), on_error="skip"),
                           "sft", PretrainWorker, describe)
    entry = manifest["files"][str(tmp_path / "in" / "docs.jsonl")]
    assert entry["lines"] == 3 and entry["skipped"] == {"too_long": 1}
    assert entry["categories"]["default"]["documents"] == 2
    assert manifest["totals"]["tokens_in"] == manifest["totals"]["tokens_out"]
    with pytest.raises(InputError, match=r"docs\.jsonl:2: .* longer than --max_length 64"):
        run_prepare(PrepareConfig(**cfg, data_output_dirs=str(tmp_path / "out2")), "sft", PretrainWorker, describe)
