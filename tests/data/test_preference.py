"""prepare_preference_dataset.py: one row per pair (chosen then rejected), labels on the responses only, each
accepted format, long pairs cut from the prompt's start or skipped, bad lines named or counted, and the same
bytes on every run."""

import json
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from colossal_hammer.data.preference import main as prepare
from tests.conftest import write_jsonl
from tests.distributed import REPO

IGNORE = -100
TRL_STRINGS = {"prompt": "什么是人工智能？", "chosen": "人工智能是让计算机完成需要智能的任务的科学。",
               "rejected": "不知道。", "category": "qa"}
TRL_MESSAGES = {"prompt": [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "Name a colour."}],
                "chosen": [{"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "assistant", "content": "A sandwich."}], "category": "qa"}
TRL_IMPLICIT = {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
                "category": "qa"}
COLOSSAL = {"context": [{"from": "human", "content": "今天天气怎么样？"}],
            "chosen": [{"from": "assistant", "content": "今天晴，适合出门。"}],
            "rejected": [{"from": "assistant", "content": "我是一只猫。"}], "category": "qa"}


def run(tokenizer_dir, tmp_path, rows, *extra, out="out"):
    write_jsonl(tmp_path / "in" / "pairs.jsonl", rows)
    manifest = prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir,
                        "--data_output_dirs", str(tmp_path / out), "--num_spliced_dataset_bins", "1",
                        "--num_workers", "1", *extra])
    rows = []
    for figures in manifest["categories"].values():
        rows.extend(load_from_disk(str(tmp_path / out / figures["dirname"] / "bin-00000")))
    return manifest, rows


def only(files):
    (entry,) = files.values()
    return entry


def halves(row):
    """(chosen ids, chosen labels), (rejected ids, rejected labels)."""
    n = row["doc_lengths"][0]
    assert len(row["doc_lengths"]) == 2 and sum(row["doc_lengths"]) == len(row["input_ids"])
    return (row["input_ids"][:n], row["labels"][:n]), (row["input_ids"][n:], row["labels"][n:])


@pytest.mark.parametrize("record, chosen, rejected", [
    (TRL_STRINGS, TRL_STRINGS["chosen"], TRL_STRINGS["rejected"]),
    (TRL_MESSAGES, "Blue.", "A sandwich."),
    (TRL_IMPLICIT, "4", "5"),
    (COLOSSAL, "今天晴，适合出门。", "我是一只猫。"),
], ids=["trl_strings", "trl_messages", "trl_implicit_prompt", "colossalchat"])
def test_each_format_gives_one_row_with_labels_on_the_responses(record, chosen, rejected, tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    manifest, (row,) = run(tokenizer_dir, tmp_path, [record], "--max_length", "512")
    assert manifest["kind"] == "preference" and manifest["chat_template"]
    (c_ids, c_labels), (r_ids, r_labels) = halves(row)
    for ids, labels, response in ((c_ids, c_labels, chosen), (r_ids, r_labels, rejected)):
        first = next(i for i, t in enumerate(labels) if t != IGNORE)
        assert all(t == IGNORE for t in labels[:first]) and labels[first:] == ids[first:]  # one labelled tail
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[first:-1]).strip() == response
        assert "[INST]" in tok.decode(ids[:first]) and "[INST]" not in tok.decode(ids[first:])
    # the prompt is the same tokens in both sequences
    c_first = next(i for i, t in enumerate(c_labels) if t != IGNORE)
    r_first = next(i for i, t in enumerate(r_labels) if t != IGNORE)
    assert c_ids[:c_first] == r_ids[:r_first]
    assert manifest["totals"]["documents"] == 1 and manifest["totals"]["target_tokens"] == \
        sum(t != IGNORE for t in row["labels"])


def test_long_pairs_lose_the_prompt_start_or_are_skipped_and_counted(tokenizer_dir, tmp_path):
    long_prompt = "请解释下面这句话的意思：" + "人工智能技术发展很快。" * 20
    rows = [dict(TRL_STRINGS, prompt=long_prompt), TRL_STRINGS]
    full, short = sorted(run(tokenizer_dir, tmp_path / "a", rows, "--max_length", "1024")[1],
                              key=lambda r: -len(r["input_ids"]))
    assert len(full["input_ids"]) > 128
    manifest, cut_rows = run(tokenizer_dir, tmp_path / "b", rows, "--max_length", "128")
    cut = max(cut_rows, key=lambda r: len(r["input_ids"]))
    assert len(cut["input_ids"]) <= 128
    (fc, fcl), _ = halves(full)
    (cc, ccl), _ = halves(cut)
    removed = len(fc) - len(cc)
    assert removed > 0 and cc[0] == fc[0]  # BOS kept
    assert cc[1:] == fc[1 + removed:] and ccl[1:] == fcl[1 + removed:]  # the prompt's start went, the rest is whole
    f = only(manifest["files"])
    assert f["truncated_documents"] == 1 and f["truncated_tokens"] == len(full["input_ids"]) - len(cut["input_ids"])
    skipped = run(tokenizer_dir, tmp_path / "c", rows, "--max_length", "128", "--long_pairs", "skip",
                  "--on_error", "skip")[0]
    assert only(skipped["files"])["skipped"] == {"too_long": 1}
    assert skipped["totals"]["documents"] == 1 and skipped["totals"]["lines"] == 2


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "prepare_preference_dataset.py"), *map(str, args)],
                          capture_output=True, text=True, env=env)


BAD = {
    "missing_field": ({"prompt": "q", "chosen": "a"}, "field 'rejected' is missing"),
    "bad_messages": ({"prompt": "q", "chosen": [{"from": "robot", "content": "a"}], "rejected": "b"},
                     "field 'chosen[0].from' must be one of human, assistant, system"),
    "user_in_response": ({"context": [{"from": "human", "content": "q"}], "chosen": [{"from": "human", "content": "a"}],
                          "rejected": [{"from": "assistant", "content": "b"}]}, "field 'chosen[0]' is a user turn"),
    "empty_reply": ({"prompt": "q", "chosen": "a", "rejected": "  "}, "field 'rejected[0].content' is an empty response"),
    "malformed_json": ('{"prompt": "q"', "malformed JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_line_is_named_or_skipped_and_counted(case, tokenizer_dir, tmp_path):
    bad, detail = BAD[case]
    path = write_jsonl(tmp_path / "in" / "pairs.jsonl", [TRL_STRINGS, bad, COLOSSAL])
    common = ["--data_input_dirs", tmp_path / "in", "--tokenizer_dir", tokenizer_dir, "--max_length", "256",
              "--num_spliced_dataset_bins", "1", "--num_workers", "1"]
    proc = cli(*common, "--data_output_dirs", tmp_path / "out")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"error: {path}:2: ") and detail in errors[0], errors[0]
    assert not (tmp_path / "out").exists()
    proc = cli(*common, "--data_output_dirs", tmp_path / "skip", "--on_error", "skip")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "skip" / "manifest.json").read_text())
    f = only(manifest["files"])
    assert f["lines"] == 3 and sum(f["skipped"].values()) == 1 and f["categories"]["qa"]["documents"] == 2


def test_reruns_are_byte_identical_and_the_manifest_accounts_for_every_pair(tokenizer_dir, tmp_path):
    rows = [dict(r, category=c) for c in ("qa", "chat") for r in (TRL_STRINGS, TRL_MESSAGES, TRL_IMPLICIT, COLOSSAL)] * 5
    rows.insert(3, "")  # a blank line: skipped and counted, never an error
    write_jsonl(tmp_path / "in" / "pairs.jsonl", rows)

    def files(out, workers):
        prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
                 str(tmp_path / out), "--max_length", "96", "--num_spliced_dataset_bins", "3", "--num_workers",
                 str(workers)])
        return {str(p.relative_to(tmp_path / out)): p.read_bytes() for p in sorted((tmp_path / out).rglob("*"))
                if p.is_file()}

    first, second = files("one", 1), files("two", 2)
    assert first == second and len(first) > 10
    manifest = json.loads(first["manifest.json"])
    totals = manifest["totals"]
    assert totals["lines"] == 41 and totals["skipped"] == 1 and totals["documents"] == 40 and totals["rows"] == 40
    assert totals["truncated_documents"] > 0  # max_length 96 cuts the system-prompted pairs
    assert sum(sum(c["bins"]) for c in manifest["categories"].values()) == 40
    stored = sum(len(load_from_disk(str(tmp_path / "one" / c["dirname"] / f"bin-{k:05d}")))
                 for c in manifest["categories"].values() for k in range(3))
    assert stored == 40
