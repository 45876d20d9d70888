"""train.py under bad input and faults, as a user meets them: one `error:` line, exit 2, nothing of an
earlier run changed; or, where the issue asks for it, a fallback that says what it did."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.distributed import REPO, TINY, TRAIN, launch, train

RUN = TINY + ["--num_samples", "32", "--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "4",
              "--save_interval", "2"]


def tree_hash(folder):
    """Every file of a run's save_dir but its lock, which names whichever process held it last."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".run.lock"):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def error_lines(proc):
    return [line for line in proc.stdout.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished run with checkpoints step-2 and step-4 (copied by each test that changes it)."""
    base = tmp_path_factory.mktemp("earlier")
    train(RUN + ["--save_dir", base / "ckpt"], base / "logs")
    return base / "ckpt"


def copy_of(earlier_run, tmp_path):
    shutil.copytree(earlier_run, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_a_second_run_into_the_same_save_dir_is_refused(earlier_run, tmp_path):
    save_dir = copy_of(earlier_run, tmp_path)
    before = tree_hash(save_dir)
    proc = launch(RUN + ["--save_dir", save_dir, "--seed", "7"], tmp_path / "logs", nproc=1)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "already holds checkpoints of an earlier run (step-2, step-4)" in error_lines(proc)[0]
    assert "Traceback" not in proc.stdout
    assert tree_hash(save_dir) == before
    # asked for explicitly, the old checkpoints go and the new run's own final checkpoint is written
    again = train(RUN + ["--save_dir", save_dir, "--seed", "7", "--overwrite_checkpoints"], tmp_path / "logs2", nproc=1)
    assert json.loads((save_dir / "step-4" / "running_states.json").read_text())["config"]["seed"] == 7
    assert again["records"][-1]["step"] == 4


def overwrite_with_nan_in_place(weights):
    """NaN float32 bytes over the middle of the tensor data: same size, same header, other content."""
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2 // 4 * 4
    data[middle:middle + 4096] = b"\x00\x00\xc0\x7f" * 1024
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_optimizer", "nan_bytes_in_place"])
def test_resume_auto_passes_over_a_damaged_newest_checkpoint(damage, earlier_run, tmp_path):
    save_dir = copy_of(earlier_run, tmp_path)
    weights = next((save_dir / "step-4" / "modeling").glob("*.safetensors"))
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "nan_bytes_in_place":
        overwrite_with_nan_in_place(weights)
    else:
        shutil.rmtree(save_dir / "step-4" / "optimizer")
    run = train(RUN + ["--save_dir", save_dir, "--resume", "auto", "--max_steps", "6"], tmp_path / "logs", nproc=1)
    assert f"warning: {save_dir / 'step-4'} cannot be resumed" in run["output"]
    assert run["info"]["resumed_from"] == str(save_dir / "step-2")
    assert [r["step"] for r in run["records"]] == [3, 4, 5, 6]


def test_a_new_stage_from_weights_damaged_in_place_is_refused(earlier_run, tmp_path):
    """--load_weights_only step-N checks the weights against the SHA-256 they were saved with, as a resume does."""
    save_dir = copy_of(earlier_run, tmp_path)
    overwrite_with_nan_in_place(next((save_dir / "step-4" / "modeling").glob("*.safetensors")))
    at = RUN.index("--model_config")
    stage = RUN[:at] + RUN[at + 2:]  # the weights come from the checkpoint instead
    proc = launch(stage + ["--load_weights_only", save_dir / "step-4", "--save_dir", tmp_path / "stage2"],
                  tmp_path / "logs", nproc=1)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_lines(proc)
    assert len(line) == 1 and f"--load_weights_only {save_dir / 'step-4'}: modeling/" in line[0], line
    assert "content changed since it was saved (SHA-256 differs)" in line[0]
    intact = launch(stage + ["--load_weights_only", save_dir / "step-2", "--save_dir", tmp_path / "stage2b",
                           "--max_steps", "1"], tmp_path / "logs2", nproc=1)
    assert intact.returncode == 0, intact.stdout[-3000:]


def test_a_second_launch_while_the_first_runs_is_refused(earlier_run, tmp_path):
    """The recovery command launched twice (a scheduler retry): the second finds the first still running."""
    save_dir = copy_of(earlier_run, tmp_path)
    first = subprocess.Popen(
        [sys.executable, str(TRAIN), *map(str, RUN), "--max_steps", "8", "--resume", "auto", "--save_dir", save_dir,
         "--tensorboard_dir", tmp_path / "logs"], cwd=tmp_path, start_new_session=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLOSSAL_HAMMER_FAULTS": "hang@2"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:  # the first run has resumed and is inside its steps
            if line.startswith("resumed from"):
                break
        assert first.poll() is None
        before = tree_hash(save_dir)
        second = launch(RUN + ["--max_steps", "8", "--resume", "auto", "--save_dir", save_dir], tmp_path / "logs2",
                        nproc=1)
        assert second.returncode == 2, second.stdout[-3000:]
        line = error_lines(second)
        assert len(line) == 1 and f"--save_dir {save_dir} is in use by a run still going (process {first.pid}" in line[0]
        assert tree_hash(save_dir) == before
    finally:
        os.killpg(first.pid, 9)
        first.wait()
    # the lock died with its process: the same command now resumes
    resumed = train(RUN + ["--max_steps", "6", "--resume", "auto", "--save_dir", save_dir], tmp_path / "logs3",
                    nproc=1)
    assert resumed["info"]["resumed_from"] == str(save_dir / "step-4")


def test_bad_steps_never_save_non_finite_weights(tokenizer_dir, tmp_path):
    """A base whose weights hold NaN: every step is bad, and the stop saves nothing rather than NaN weights as
    the "last good state"."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.conftest import save_tiny_llama

    base = save_tiny_llama(tokenizer_dir, tmp_path / "base")
    weights = next(base.glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, weights, metadata={"format": "pt"})
    proc = launch(["--pretrained", base, "--benchmark", "--num_samples", "32", "--max_length", "64", "--plugin", "ddp",
                   "--mixed_precision", "fp32", "--max_bad_steps", "2", "--save_dir", tmp_path / "ckpt"],
                  tmp_path / "logs", nproc=1)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "The weights are not finite, so nothing is saved" in error_lines(proc)[0]
    assert not list((tmp_path / "ckpt").glob("step-*"))


def test_a_disk_that_fills_mid_save_ends_in_one_line_and_leaves_no_tmp_folder(earlier_run, tmp_path):
    """Files may grow to 200 KB (RLIMIT_FSIZE: the kernel's EFBIG, as ENOSPC on a full disk): the metrics fit,
    the weights (560 KB) do not."""
    import resource

    save_dir = copy_of(earlier_run, tmp_path)
    before = tree_hash(save_dir)
    limit = 200 * 1024
    proc = subprocess.run(
        [sys.executable, str(TRAIN), *map(str, RUN), "--max_steps", "6", "--resume", "auto", "--save_dir", save_dir,
         "--tensorboard_dir", tmp_path / "logs"], cwd=tmp_path, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 2, proc.stdout[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and f"--save_dir {save_dir}: saving step 6 failed on rank 0" in lines[0], proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout
    assert sorted(p.name for p in save_dir.iterdir()) == [".run.lock", "step-2", "step-4"]
    assert tree_hash(save_dir) == before


def test_resume_auto_says_what_it_found(tmp_path):
    run = train(RUN + ["--save_dir", tmp_path / "typo", "--resume", "auto", "--max_steps", "1"], tmp_path / "logs",
                nproc=1)
    assert f"resume auto: {tmp_path / 'typo'} does not exist; starting from step 0" in run["output"]


def test_metrics_after_a_crash_and_resume_list_each_step_once(tmp_path):
    flags = RUN + ["--max_steps", "6", "--save_dir", tmp_path / "ckpt"]
    crashed = launch(flags, tmp_path / "logs", env={"COLOSSAL_HAMMER_FAULTS": "kill_mid_save@6"}, nproc=1)
    assert crashed.returncode != 0
    written = [json.loads(x)["step"] for x in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert written == [1, 2, 3, 4, 5, 6]
    resumed = train(flags + ["--resume", "auto"], tmp_path / "logs", nproc=1)
    assert [r["step"] for r in resumed["records"]] == [1, 2, 3, 4, 5, 6]


def stage_two(save_dir):
    return ["--load_weights_only", save_dir / "step-4", "--benchmark", "--num_samples", "32", "--max_length", "64",
            "--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "2"]


CASES = {
    # name: (extra flags or a function of the earlier run's save_dir, expected words in the error line)
    "negative lr": (["--lr", "-1"], "--lr must be >= 0"),
    "nan lr": (["--lr", "nan"], "--lr nan: give a finite number"),
    "nan weight decay": (["--weight_decay", "nan"], "--weight_decay nan: give a finite number"),
    "nan beta": (["--beta", "nan"], "--beta nan: give a finite number"),
    "nan lora alpha": (["--lora_alpha", "nan"], "--lora_alpha nan: give a finite number"),
    "inf router aux loss": (["--router_aux_loss_coef", "inf"], "--router_aux_loss_coef inf: give a finite number"),
    "rope_scaling without a factor": (["--rope_scaling", "yarn"], "--rope_scaling and --rope_factor go together"),
    "min_lr_ratio above 1": (["--lr_schedule", "wsd", "--min_lr_ratio", "2"], "--min_lr_ratio must be between 0 and 1"),
    "max_length 1": (["--max_length", "1", "--plugin", "gemini", "--mixed_precision", "bf16"], "--max_length must be >= 2"),
    "stage 2 resumes stage 1": (lambda d: stage_two(d) + ["--save_dir", d, "--resume", "auto"],
                                "belongs to another stage"),
    "ddp checkpoint resumed under gemini": (lambda d: RUN + ["--plugin", "gemini", "--mixed_precision", "bf16",
                                                       "--save_dir", d, "--resume", "auto"],
                                      "was saved with --plugin ddp --mixed_precision fp32"),
    "save_dir under a file": (lambda d: RUN + ["--save_dir", d / "step-2" / "running_states.json" / "x"],
                              "cannot write there"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_with_one_line(name, earlier_run, tmp_path):
    save_dir = copy_of(earlier_run, tmp_path)
    before = tree_hash(save_dir)
    flags, words = CASES[name]
    argv = flags(save_dir) if callable(flags) else RUN + flags + ["--save_dir", tmp_path / "new"]
    proc = launch(argv, tmp_path / "logs", nproc=1)
    assert proc.returncode == 2, proc.stdout[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and words in lines[0], proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout.split("error:")[0]
    assert tree_hash(save_dir) == before


@pytest.fixture(scope="module")
def sft_data(tokenizer_dir, tmp_path_factory):
    from tests.training.sft_data import tiny_model, uneven_sft_dataset

    base = tmp_path_factory.mktemp("data")
    return uneven_sft_dataset(tokenizer_dir, base / "sft", samples=8), tiny_model(tokenizer_dir, base / "model")


DATA_CASES = {
    "rows longer than --max_length": (["--max_length", "64"], "rows are up to 192 tokens long"),
    "unknown category weight": (["--category_weights", "qa=1,nope=2"], "no category 'nope' in the datasets"),
    "vocabulary smaller than the data's ids": (["--model_config", "tiny"], "outside the model's vocabulary of 512"),
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_dataset_mismatch_refused_at_start(name, sft_data, tmp_path):
    data, model = sft_data
    flags, words = DATA_CASES[name]
    source = [] if "--model_config" in flags else ["--pretrained", model]
    argv = [*source, "--dataset", data, "--plugin", "ddp", "--max_length", "192", "--max_steps", "1", *flags,
            "--save_dir", tmp_path / "ckpt"]
    proc = launch(argv, tmp_path / "logs", nproc=1)
    assert proc.returncode == 2, proc.stdout[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and words in lines[0], proc.stdout[-3000:]
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_each_stage_logs_beside_its_checkpoints_and_never_into_another_runs_metrics(tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, str(TRAIN), *RUN, "--max_steps", "1", *map(str, flags)], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)

    first = run("--save_dir", tmp_path / "s1")
    assert first.returncode == 0, first.stdout[-3000:]
    assert (tmp_path / "s1" / "logs" / "metrics.jsonl").is_file()  # the default: SAVE_DIR/logs
    before = (tmp_path / "s1" / "logs" / "metrics.jsonl").read_bytes()
    second = run("--save_dir", tmp_path / "s2", "--tensorboard_dir", tmp_path / "s1" / "logs")
    assert second.returncode == 2
    assert [line for line in second.stdout.splitlines() if line.startswith("error:")] == [
        f"error: --tensorboard_dir {tmp_path / 's1' / 'logs'} already holds metrics.jsonl of an earlier run: give a "
        "new --tensorboard_dir, continue that run with --resume auto, or pass --overwrite_checkpoints"]
    assert (tmp_path / "s1" / "logs" / "metrics.jsonl").read_bytes() == before


def test_the_disk_space_refusal_gives_figures_a_reader_can_use():
    """It said "0.0 GiB free ... needs 0.0 GiB" for a small model on a nearly full disk."""
    from colossal_hammer.training.preflight import size_text

    assert [size_text(n) for n in (139_584 * 16, 700, 3 * 2**30, 5 * 2**10)] == [
        "2.1 MiB", "700 bytes", "3.0 GiB", "5.0 KiB"]
