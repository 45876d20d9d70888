"""`make demo` after an interrupted or finished run starts afresh in its own output folder, instead of stopping
at its first training with "--save_dir ... already holds checkpoints of an earlier run"; a folder the demo did
not write is refused, never cleared."""

import subprocess
import sys

import pytest

from colossal_hammer.demo.pipeline import MARKER, prepare_output
from colossal_hammer.errors import InputError
from tests.distributed import REPO


def test_an_earlier_demo_output_is_cleared(tmp_path, capsys):
    out = tmp_path / "demo_output"
    prepare_output(out)
    stale = out / "ckpt" / "base" / "step-400"  # what a run stopped by Ctrl-C left behind
    stale.mkdir(parents=True)
    (stale / "running_states.json").write_text("{}")
    (out / "report.md").write_text("old")
    prepare_output(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    assert "holds an earlier demo run's output; starting afresh" in capsys.readouterr().out


def test_a_folder_the_demo_did_not_write_is_refused_and_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(InputError, match="holds files the demo did not write"):
        prepare_output(out)
    proc = subprocess.run([sys.executable, "-m", "colossal_hammer.demo.pipeline", "--scale", "test", "--output_dir",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --output_dir {out}: holds files the demo did not write; give a new or empty folder"], proc.stderr
    assert (out / "thesis.tex").read_text() == "keep me"
