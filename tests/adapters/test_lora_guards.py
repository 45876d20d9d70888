"""What keeps LoRA adapters on the weights and settings they were trained with, through the real commands:
a resume with another --lora_alpha or on other base weights, a merge into another base or into the base's
own folder, and --lora_rank 0 are refused in one line, and nothing of the inputs changes."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import save_tiny_llama
from tests.distributed import REPO, launch, train
from tests.training.sft_data import uneven_sft_dataset


@pytest.fixture(scope="module")
def lora_run(tokenizer_dir, tmp_path_factory):
    """A 2-step LoRA run (ddp, 1 process) on a base of its own, and another base of the same shape."""
    root = tmp_path_factory.mktemp("lora-guards")
    run = {"data": uneven_sft_dataset(tokenizer_dir, root / "sft", samples=8),
           "base": str(save_tiny_llama(tokenizer_dir, root / "base", hidden=64, layers=2, seed=0)),
           "other": str(save_tiny_llama(tokenizer_dir, root / "other", hidden=64, layers=2, seed=1)),
           "save_dir": root / "ckpt"}
    train(flags(run) + ["--max_steps", "2", "--save_dir", run["save_dir"]], root / "logs", nproc=1)
    return run


def flags(run, alpha="8"):
    return ["--pretrained", run["base"], "--dataset", run["data"], "--max_length", "192", "--batch_size", "1",
            "--plugin", "ddp", "--mixed_precision", "fp32", "--seed", "5", "--lora_rank", "4", "--lora_alpha", alpha,
            "--save_interval", "0"]


def one_error(proc) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    return lines[0]


def export(*args):
    return subprocess.run([sys.executable, "-m", "colossal_hammer.model.export", *map(str, args)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def folder_bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_resume_with_another_lora_alpha_is_refused(lora_run, tmp_path):
    proc = launch(flags(lora_run, alpha="16") + ["--max_steps", "3", "--load_checkpoint",
                                                 lora_run["save_dir"] / "step-2", "--save_dir", tmp_path / "c"],
                  tmp_path / "logs", nproc=1)
    line = one_error(proc)
    assert "was saved with --lora_alpha 8.0, this run has --lora_alpha 16.0" in line
    # --load_weights_only refuses an adapter folder: the advice is to merge first
    assert f"merge its adapters (python -m colossal_hammer.model.export --checkpoint {lora_run['save_dir'] / 'step-2'}" in line


def test_resume_on_other_base_weights_in_the_same_folder_is_refused(lora_run, tmp_path):
    """The base folder re-exported in place (same path, same shape, other weights): the path agrees, the
    weights' hash does not."""
    base = tmp_path / "base"
    shutil.copytree(lora_run["base"], base)
    run = {**lora_run, "base": str(base)}
    train(flags(run) + ["--max_steps", "2", "--save_dir", tmp_path / "ckpt"], tmp_path / "logs", nproc=1)
    for weights in base.glob("*.safetensors"):
        weights.unlink()
    for weights in Path(lora_run["other"]).glob("*.safetensors"):
        shutil.copyfile(weights, base / weights.name)
    proc = launch(flags(run) + ["--max_steps", "3", "--resume", "auto", "--save_dir", tmp_path / "ckpt"],
                  tmp_path / "logs2", nproc=1)
    assert "holds LoRA adapters trained on other base weights" in one_error(proc)


def test_merge_into_another_base_of_the_same_shape_is_refused(lora_run, tmp_path):
    proc = export("--checkpoint", lora_run["save_dir"] / "step-2", "--output_dir", tmp_path / "merged",
                  "--merge_lora", "--base_model", lora_run["other"])
    assert "its weights are not those the adapters were trained on" in one_error(proc)
    assert not (tmp_path / "merged").exists()


def test_merge_never_writes_into_its_base(lora_run):
    base = Path(lora_run["base"])
    before = folder_bytes(base)
    proc = export("--checkpoint", lora_run["save_dir"] / "step-2", "--output_dir", base, "--merge_lora")
    assert f"--output_dir {base}: is the input {base}" in one_error(proc)
    assert folder_bytes(base) == before


def test_lora_rank_0_is_refused(lora_run, tmp_path):
    argv = flags(lora_run) + ["--max_steps", "1", "--save_dir", tmp_path / "c"]
    argv[argv.index("--lora_rank") + 1] = "0"
    proc = launch(argv, tmp_path / "logs", nproc=1)
    assert "--lora_rank 0: a LoRA rank is 1 or more" in one_error(proc)
