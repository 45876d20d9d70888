"""prepare_pretrain_dataset.py: every token accounted for, boundary merges impossible, output reproducible."""

import gzip
import json
import shutil

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from colossal_hammer.data.pretrain import main as prepare
from colossal_hammer.data import corpora
from tests.conftest import write_jsonl

IGNORE = -100


def corpus_rows():
    news = corpora.chinese_news()
    rows = [{"target": s, "category": cat} for cat in sorted(news) for s in news[cat][:40]]
    rows += [{"target": p, "category": "english"} for p in corpora.english_paragraphs()[:150]]
    # far longer than max_length: must be chunked, not truncated
    rows.append({"target": "\n\n".join(corpora.english_paragraphs()[200:230]), "category": "english"})
    return rows


def read_rows(out_dir):
    manifest = json.loads((out_dir / "manifest.json").read_text())
    rows = []
    for category, figures in manifest["categories"].items():
        for k in range(len(figures["bins"])):
            ds = load_from_disk(str(out_dir / figures["dirname"] / f"bin-{k:05d}"))
            assert len(ds) == figures["bins"][k]
            rows.extend((category, r) for r in ds)
    return manifest, rows


def test_every_token_accounted_for(tokenizer_dir, tmp_path):
    rows = corpus_rows()
    write_jsonl(tmp_path / "in" / "a.jsonl", rows[: len(rows) // 2])
    write_jsonl(tmp_path / "in" / "b.jsonl", rows[len(rows) // 2 :])
    max_length = 256
    prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
             str(tmp_path / "out"), "--max_length", str(max_length), "--num_spliced_dataset_bins", "3",
             "--num_workers", "1"])
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = {}
    for row in rows:
        ids = [tok.bos_token_id] + tok(row["target"], add_special_tokens=False).input_ids + [tok.eos_token_id]
        expected.setdefault(row["category"], []).extend(ids)
    assert max(len(tok(r["target"]).input_ids) for r in rows) > 3 * max_length  # the long document is there
    manifest, out_rows = read_rows(tmp_path / "out")
    for category, ids in expected.items():
        got = [r for c, r in out_rows if c == category]
        assert all(len(r["input_ids"]) == max_length for r in got)
        real = [t for r in got for t in r["input_ids"][: max_length - r["num_padding"]]]
        labelled = [t for r in got for t in r["labels"] if t != IGNORE]
        # bins reorder rows, so compare as multisets; counts are exact
        assert sorted(real) == sorted(ids), category
        assert len(labelled) == len(ids) - sum(1 for t in ids if t == tok.bos_token_id)
        assert sum(r["num_padding"] for r in got) < max_length  # only one padded row per category
        assert manifest["categories"][category]["tokens_out"] == len(ids)
    totals = manifest["totals"]
    assert totals["tokens_in"] == totals["tokens_out"] == sum(map(len, expected.values()))
    assert totals["documents"] == len(rows) and totals["skipped"] == 0
    assert manifest["categories"]["english"]["chunked_documents"] >= 1


def test_boundary_merge_keeps_target_labelled(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    source, target = "问：什么是人工", "智能技术"
    joint = tok(source + target, add_special_tokens=False).input_ids
    alone = tok(source, add_special_tokens=False).input_ids
    assert joint[: len(alone)] != alone  # the case is real: a token spans the boundary in joint tokenization
    write_jsonl(tmp_path / "in" / "qa.jsonl", [{"source": source, "target": target, "category": "qa"}])
    prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
             str(tmp_path / "out"), "--max_length", "64", "--num_spliced_dataset_bins", "1"])
    _, rows = read_rows(tmp_path / "out")
    (_, row), = rows
    labelled = [t for t in row["labels"] if t != IGNORE]
    assert tok.decode(labelled[:-1]) == target and labelled[-1] == tok.eos_token_id
    real = row["input_ids"][: 64 - row["num_padding"]]
    assert tok.decode(real, skip_special_tokens=True) == source + target
    # every target token is labelled with itself
    n = len(labelled)
    assert real[-n:] == labelled and all(t == IGNORE for t in row["labels"][: len(real) - n])


def test_reproducible_whatever_file_order_and_workers(tokenizer_dir, tmp_path):
    rows = corpus_rows()
    chunks = [rows[i::5] for i in range(5)]
    outputs = []
    for run, (order, workers, suffix) in enumerate([(range(5), 1, ""), (reversed(range(5)), 2, ".gz")]):
        in_dir = tmp_path / "in"
        shutil.rmtree(in_dir, ignore_errors=True)
        for i in order:  # files created in a different order each run
            path = write_jsonl(in_dir / f"part-{i}.jsonl", chunks[i])
            if suffix:
                path.with_name(path.name + suffix).write_bytes(gzip.compress(path.read_bytes(), mtime=0))
                path.unlink()
        out = tmp_path / f"out{run}"
        manifest = prepare(["--data_input_dirs", str(in_dir), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
                            str(out), "--max_length", "128", "--num_spliced_dataset_bins", "4", "--num_workers",
                            str(workers), "--seed", "7"])
        outputs.append((manifest, out))
    (m1, out1), (m2, out2) = outputs
    assert m1["output_hash"] == m2["output_hash"]
    assert m1["categories"] == m2["categories"] and m1["totals"] == m2["totals"]
    data1 = sorted(p.relative_to(out1) for p in out1.rglob("*.arrow"))
    assert data1 == sorted(p.relative_to(out2) for p in out2.rglob("*.arrow"))
    for rel in data1:
        assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes()


def test_seed_changes_bin_assignment_only(tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", corpus_rows())
    hashes, totals = [], []
    for seed in ("1", "2"):
        m = prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
                     str(tmp_path / f"out{seed}"), "--max_length", "128", "--num_spliced_dataset_bins", "4",
                     "--seed", seed])
        hashes.append(m["output_hash"])
        totals.append(m["totals"])
    assert hashes[0] != hashes[1] and totals[0] == totals[1]


def test_zstd_input(tokenizer_dir, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = write_jsonl(tmp_path / "in" / "a.jsonl", corpus_rows()[:20])
    (tmp_path / "in" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
    path.unlink()
    m = prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
                 str(tmp_path / "out"), "--max_length", "128", "--num_spliced_dataset_bins", "2"])
    assert m["totals"]["documents"] == 20
    assert list(m["files"]) == [str(tmp_path / "in" / "a.jsonl.zst")]


def test_overwrite_replaces_our_own_output_whole(tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", corpus_rows()[:30])
    flags = ["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
             str(tmp_path / "out"), "--num_spliced_dataset_bins", "2"]
    first = prepare([*flags, "--max_length", "64"])
    second = prepare([*flags, "--max_length", "128", "--overwrite"])
    assert first["output_hash"] != second["output_hash"]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no tmp or old folder left behind
    # the output hash is over what is on disk
    from colossal_hammer.data.bins import content_hash
    import hashlib
    digests = {str(p.relative_to(tmp_path / "out")): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in (tmp_path / "out").rglob("*.arrow")}
    assert len(digests) == 2 and content_hash(digests) == second["output_hash"]
