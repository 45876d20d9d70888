"""The data CLIs under bad input and faults (issue 10, data side), run for real in a subprocess: exit status
2, one `error:` line on stderr, no traceback, and no input or earlier output changed (hashed before/after)."""

import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.distributed import REPO

LINE = {"target": "这是正常的一行文本，用来测试。 A normal line of text for the test.", "category": "c"}


def chat(*turns):
    """chat("q", "a", ...) alternates human/assistant; ("system", text) tuples give other roles."""
    messages = []
    for i, turn in enumerate(turns):
        role, text = turn if isinstance(turn, tuple) else (("human", "assistant")[i % 2], turn)
        messages.append({"from": role, "content": text})
    return {"messages": messages, "category": "chat"}


def cli(script, args, limit_file_size=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def limit():  # runs in the child before exec
        # A file size limit makes writes fail with EFBIG, as a full disk fails them with ENOSPC; it binds
        # root too (root ignores chmod and has reserved blocks). SIGXFSZ ignored so the write returns an error.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=env, preexec_fn=limit if limit_file_size else None, timeout=600)


def tree_hash(root: Path) -> dict:
    """Every path under root (symlinks not followed) -> sha256 of its content, or its kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def pretrain_input(t):
    write_jsonl(t / "in" / "a.jsonl", [LINE] * 3)
    return t / "in"


def fake_earlier_output(out, extra=None):
    """An earlier run's output as far as --overwrite can tell: our manifest.json and the folders it lists."""
    (out / "c" / "bin-00000").mkdir(parents=True)
    (out / "c" / "bin-00000" / "state.json").write_text("{}")
    (out / "manifest.json").write_text(json.dumps({"kind": "pretrain", "categories": {"c": {"dirname": "c"}}}))
    if extra:
        (out / extra).write_text("the user's own file")


# Each case: (setup(tmp) -> (script, flags beyond the common ones), expected text in the error line, extras).
def output_is_input(t):
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs", t / "in",
                                           "--overwrite"]


def output_is_parent_of_input(t):
    pretrain_input(t)
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t, "--overwrite"]


def output_inside_input(t):
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs",
                                           t / "in" / "prepared"]


def output_is_symlink_to_input(t):
    (t / "link").symlink_to(pretrain_input(t))
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "link",
                                           "--overwrite"]


def output_contains_tokenizer(t):
    # the tokenizer is copied under the output's parent so that --overwrite of that parent would delete it
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs",
                                           t / "work", "--overwrite", "--tokenizer_dir", t / "work" / "tok"]


def overwrite_folder_not_ours(t):
    (t / "out").mkdir()
    (t / "out" / "thesis.tex").write_text("years of work")
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs", t / "out",
                                           "--overwrite"]


def overwrite_ours_holding_a_user_file(t):
    fake_earlier_output(t / "out", extra="notes.txt")
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs", t / "out",
                                           "--overwrite"]


def sft_first_reply_empty(t):
    write_jsonl(t / "in" / "chat.jsonl", [chat("什么是人工智能？", "", "Give one example.", "Machine translation.")])
    return "prepare_sft_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def sft_system_not_rendered(t):
    # the Llama-2 template renders a system message only as the first turn: this one would vanish
    write_jsonl(t / "in" / "chat.jsonl", [chat("hi", ("system", "Answer in French."), ("assistant", "bonjour"))])
    return "prepare_sft_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def truncated_gz(t):
    data = gzip.compress(("\n".join(json.dumps(LINE) for _ in range(200)) + "\n").encode(), mtime=0)
    (t / "in").mkdir()
    (t / "in" / "a.jsonl.gz").write_bytes(data[: len(data) // 2])
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def corrupt_gz(t):
    data = bytearray(gzip.compress(("\n".join(json.dumps(LINE) for _ in range(200)) + "\n").encode(), mtime=0))
    data[20:40] = b"\xff" * 20
    (t / "in").mkdir()
    (t / "in" / "a.jsonl.gz").write_bytes(bytes(data))
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def output_parent_is_a_file(t):
    # chmod cannot make a folder unwritable for root; a path through a regular file fails for anyone
    (t / "afile").write_text("x")
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs",
                                           t / "afile" / "out"]


def output_under_proc(t):
    # /proc refuses new folders even to root: a read-only place that really fails
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs",
                                           "/proc/colossal_hammer_test/out"]


def disk_full(t):
    write_jsonl(t / "in" / "a.jsonl", [LINE] * 300)
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def category_named_manifest(t):
    # the category becomes a folder name: this one would be the folder where the manifest file goes
    write_jsonl(t / "in" / "a.jsonl", [LINE, dict(LINE, category="manifest.json")])
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", t / "in", "--data_output_dirs", t / "out"]


def overwrite_onto_a_file(t):
    (t / "out").write_text("a file the user keeps")
    return "prepare_pretrain_dataset.py", ["--data_input_dirs", pretrain_input(t), "--data_output_dirs", t / "out",
                                           "--overwrite"]


CASES = {  # name: (setup, expected in the error line, file size limit)
    "2-output-is-input": (output_is_input, "is the input folder", None),
    "2-output-is-parent-of-input": (output_is_parent_of_input, "contains the input folder", None),
    "2-output-inside-input": (output_inside_input, "is inside the input folder", None),
    "2-output-symlink-to-input": (output_is_symlink_to_input, "is the input folder", None),
    "2-output-contains-tokenizer": (output_contains_tokenizer, "contains the tokenizer folder", None),
    "2-overwrite-folder-not-ours": (overwrite_folder_not_ours, "has no manifest.json", None),
    "2-overwrite-ours-with-user-file": (overwrite_ours_holding_a_user_file, "holds 'notes.txt'", None),
    "6-first-reply-empty": (sft_first_reply_empty, "chat.jsonl:1: field 'messages[1].content' is an empty "
                                                   "assistant reply", None),
    "6-system-not-rendered": (sft_system_not_rendered, "chat.jsonl:1: field 'messages[1]' (system) does not "
                                                       "appear in what the chat template renders", None),
    "10-truncated-gz": (truncated_gz, "a.jsonl.gz: truncated", None),
    "10-corrupt-gz": (corrupt_gz, "a.jsonl.gz: corrupt gzip data", None),
    "10-output-parent-is-a-file": (output_parent_is_a_file, "cannot create", None),
    "10-output-read-only": (output_under_proc, "cannot create", None),
    "10-disk-full": (disk_full, "failed: File too large", 4096),
    "10-overwrite-onto-a-file": (overwrite_onto_a_file, "is an existing file", None),
    "poor-category-named-manifest": (category_named_manifest, "a.jsonl:2: field 'category': 'manifest.json' is",
                                     None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, tokenizer_dir, tmp_path):
    setup, expected, limit = CASES[case]
    t = tmp_path / "t"
    t.mkdir()
    if setup is output_contains_tokenizer:
        shutil.copytree(tokenizer_dir, t / "work" / "tok")
    script, flags = setup(t)
    if "--tokenizer_dir" not in flags:
        flags += ["--tokenizer_dir", tokenizer_dir]
    before = tree_hash(tmp_path)
    proc = cli(script, [*flags, "--max_length", "64", "--num_spliced_dataset_bins", "2", "--num_workers", "1"],
               limit_file_size=limit)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert tree_hash(tmp_path) == before  # no input touched, no earlier output touched, no leftover tmp folder


def test_leftover_tmp_folders_are_reported_and_dead_ones_removed(tokenizer_dir, tmp_path):
    """A killed prepare leaves OUT.tmp-<pid>: the next run removes it when that process is gone (one line
    each), leaves a running one's alone (and says so), and touches no other folder."""
    in_dir = pretrain_input(tmp_path)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # reaped by subprocess.run: this pid runs nothing now
    stale = tmp_path / f"out.tmp-{dead_pid}"
    (stale / "c" / "bin-00000").mkdir(parents=True)
    (stale / "c" / "bin-00000" / DATA).write_bytes(b"half a bin")
    running = tmp_path / f"out.tmp-{os.getpid()}"  # this test process is alive
    running.mkdir()
    unrelated = tmp_path / "out.tmp-backup"
    unrelated.mkdir()
    proc = cli("prepare_pretrain_dataset.py", ["--data_input_dirs", in_dir, "--data_output_dirs", tmp_path / "out",
                                               "--tokenizer_dir", tokenizer_dir, "--max_length", "64",
                                               "--num_spliced_dataset_bins", "1", "--num_workers", "1"])
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, proc.stderr
    assert any(f"removed {stale}" in n and str(dead_pid) in n for n in notes), notes
    assert any(str(running) in n and "still running" in n for n in notes), notes
    assert not stale.exists() and running.is_dir() and unrelated.is_dir()
    assert (tmp_path / "out" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", "out", running.name, unrelated.name])


def test_identical_pair_is_skipped_with_a_warning_and_counted(tokenizer_dir, tmp_path):
    """chosen == rejected teaches DPO nothing (its gradient is zero there): the pair is skipped even under
    --on_error fail, counted in the manifest by name, and one warning line gives the count."""
    pair = {"prompt": "什么是人工智能？", "chosen": "让计算机完成需要智能的任务。", "rejected": "不知道。", "category": "qa"}
    same = dict(pair, rejected=pair["chosen"])
    write_jsonl(tmp_path / "in" / "pairs.jsonl", [pair, same, same, pair])
    before = tree_hash(tmp_path / "in")
    proc = cli("prepare_preference_dataset.py", ["--data_input_dirs", tmp_path / "in", "--data_output_dirs",
                                                 tmp_path / "out", "--tokenizer_dir", tokenizer_dir,
                                                 "--max_length", "128", "--num_spliced_dataset_bins", "1",
                                                 "--num_workers", "1"])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 pairs" in warnings[0] and "identical_pair" in warnings[0], proc.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (f,) = manifest["files"].values()
    assert f["skipped"] == {"identical_pair": 2} and f["categories"]["qa"]["documents"] == 2
    assert manifest["totals"]["rows"] == 2
    assert tree_hash(tmp_path / "in") == before


DATA = "data-00000-of-00001.arrow"
