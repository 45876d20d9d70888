"""The README's training examples run as written (placeholders like /path/to excepted)."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed import REPO


def readme_commands(prefixes=("torchrun", "colossalai run")):
    """Commands in the README's bash blocks that start with one of `prefixes`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command.startswith(prefixes):
                commands.append(command)
    return commands


def runnable_training_commands():
    """The self-contained training examples (a tiny model on random tokens); the others name user paths."""
    return [c for c in readme_commands() if "--model_config tiny" in c]


def test_readme_has_both_launchers():
    launchers = {c.split()[0] for c in runnable_training_commands()}
    assert launchers == {"torchrun", "colossalai"}


@pytest.mark.parametrize("command", runnable_training_commands())
def test_readme_training_example(command, tmp_path):
    argv = shlex.split(command)
    bindir = Path(sys.executable).parent
    argv[0] = str(bindir / argv[0])  # the venv's torchrun / colossalai, as `make setup` installs them
    argv[argv.index("train.py")] = str(REPO / "train.py")
    argv += ["--tensorboard_dir", str(tmp_path / "logs")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    records = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 11))
    assert all(r["tokens_per_second"] > 0 and r["grad_norm"] > 0 for r in records)
    info = json.loads((tmp_path / "logs" / "run_info.json").read_text())
    assert info["world_size"] == 2
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs"))


def readme_python_commands():
    return readme_commands(prefixes=("python ",))


@pytest.mark.parametrize("command", readme_python_commands() + readme_commands())
def test_readme_example_flags_exist(command):
    """Examples with user paths cannot run here; every flag they pass must still be in the tool's --help."""
    argv = shlex.split(command)
    if argv[0] != "python":  # a launcher: its own flags come before train.py
        argv = argv[argv.index("train.py"):]
        entry = [str(REPO / "train.py")]
    else:
        entry = argv[1:3] if argv[1] == "-m" else [str(REPO / argv[1])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    help_text = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, env=env,
                               cwd=REPO, check=True).stdout
    flags = [w.strip("[]") for w in argv if w.strip("[]").startswith("--")]
    assert flags and all(f in help_text for f in flags), [f for f in flags if f not in help_text]


def test_readme_shows_every_tool():
    shown = {shlex.split(c)[1] if shlex.split(c)[1] != "-m" else shlex.split(c)[2] for c in readme_python_commands()}
    assert shown >= {"prepare_pretrain_dataset.py", "prepare_sft_dataset.py", "prepare_preference_dataset.py",
                     "colossal_hammer.tokenizer.analyze",
                     "colossal_hammer.tokenizer.extend", "colossal_hammer.tokenizer.merge",
                     "colossal_hammer.model.init_embeddings", "colossal_hammer.model.upcycle"}
