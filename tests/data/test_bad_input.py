"""Each bad input gives one `error:` line naming file and line (exit 2, no traceback, nothing written),
or with --on_error skip is skipped and counted by reason in the manifest."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import write_jsonl
from tests.distributed import REPO

GOOD = {"target": "正常的一行。", "category": "c"}
CASES = {
    "malformed_json": ('{"target": "oops"', "malformed JSON"),
    "missing_field": ({"source": "x", "category": "c"}, "field 'target' is missing"),
    "non_string_field": ({"target": 5, "category": "c"}, "field 'target' must be a string, got int"),
    "non_string_category": ({"target": "ok", "category": ["c"]}, "field 'category' must be a string"),
    "empty_text": ({"target": "   ", "category": "c"}, "field 'target' is empty"),
    "not_an_object": ("[1, 2]", "expected a JSON object, got list"),
}


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "prepare_pretrain_dataset.py"), *map(str, args)],
                          capture_output=True, text=True, env=env)


def args(tokenizer_dir, in_dir, out_dir, *extra):
    return ["--data_input_dirs", in_dir, "--tokenizer_dir", tokenizer_dir, "--data_output_dirs", out_dir,
            "--max_length", "64", "--num_spliced_dataset_bins", "1", "--num_workers", "1", *extra]


def assert_one_error(proc, expected, out_dir):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out_dir.exists() and not list(out_dir.parent.glob(out_dir.name + ".tmp-*"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_line_fails_with_file_and_line(case, tokenizer_dir, tmp_path):
    bad, detail = CASES[case]
    path = write_jsonl(tmp_path / "in" / "data.jsonl", [GOOD, bad, GOOD])
    proc = cli(*args(tokenizer_dir, tmp_path / "in", tmp_path / "out"))
    assert_one_error(proc, f"{path}:2: {detail}", tmp_path / "out")


def test_invalid_utf8(tokenizer_dir, tmp_path):
    path = tmp_path / "in" / "data.jsonl"
    path.parent.mkdir()
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"target": "\xff\xfe"}\n')
    proc = cli(*args(tokenizer_dir, tmp_path / "in", tmp_path / "out"))
    assert_one_error(proc, f"{path}:2: invalid UTF-8", tmp_path / "out")


def test_empty_input_folder(tokenizer_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not jsonl")
    proc = cli(*args(tokenizer_dir, tmp_path / "in", tmp_path / "out"))
    assert_one_error(proc, f"{tmp_path / 'in'}: no *.jsonl", tmp_path / "out")


def test_tokenizer_that_does_not_load(tmp_path):
    write_jsonl(tmp_path / "in" / "data.jsonl", [GOOD])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{not json")
    proc = cli(*args(str(tmp_path / "tok"), tmp_path / "in", tmp_path / "out"))
    assert_one_error(proc, f"{tmp_path / 'tok'}: tokenizer does not load", tmp_path / "out")


def test_existing_output_is_not_touched(tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "in" / "data.jsonl", [GOOD])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    proc = cli(*args(tokenizer_dir, tmp_path / "in", tmp_path / "out"))
    assert proc.returncode == 2 and "output folder exists" in proc.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_skip_counts_every_reason(tokenizer_dir, tmp_path):
    lines = [GOOD] + [bad for bad, _ in CASES.values()] + ["", GOOD]
    path = write_jsonl(tmp_path / "in" / "data.jsonl", lines)
    with open(path, "ab") as f:
        f.write(b'{"target": "\xff"}\n')
    proc = cli(*args(tokenizer_dir, tmp_path / "in", tmp_path / "out", "--on_error", "skip"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["files"][str(path)]
    assert entry["skipped"] == {"blank_line": 1, "empty_text": 1, "invalid_utf8": 1, "malformed_json": 1,
                                "missing_field": 1, "non_string_field": 2, "not_an_object": 1}
    assert entry["lines"] == len(lines) + 1
    assert entry["categories"]["c"]["documents"] == 2
