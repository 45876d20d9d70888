"""train.py --task dpo for real, 2 processes on CPU: at step 0 the policy is its reference (loss ln 2, rewards
0); on a learnable synthetic preference set the reward accuracy passes 0.9; under every plugin a run SIGKILLed
mid-checkpoint resumes with bit-identical losses and matches DDP on the same data."""

import json
import math

import pytest

from tests.distributed import launch, train
from tests.training.dpo_data import preference_dataset
from tests.training.sft_data import tiny_model

PAIRS = 32
SHARDED_GEMINI = {"COLOSSAL_HAMMER_GEMINI_CHUNK_M": "0.01"}


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("dpo")
    return {"data": preference_dataset(tokenizer_dir, base / "pairs", pairs=PAIRS),
            "model": tiny_model(tokenizer_dir, base / "model"), "base": base, "refs": {}}


def common(setup):
    return ["--pretrained", setup["model"], "--dataset", setup["data"], "--task", "dpo", "--max_length", "160",
            "--seed", "5"]


def test_starts_at_ln2_with_zero_rewards_and_learns_the_preference(setup, tmp_path):
    run = train(common(setup) + ["--plugin", "ddp", "--mixed_precision", "fp32", "--batch_size", "2",
                                 "--num_epochs", "6", "--lr", "3e-3", "--save_interval", "0"], tmp_path / "logs")
    first, records = run["records"][0], run["records"]
    assert abs(first["loss"] - math.log(2)) < 1e-5, first
    # the reference pass batched the pairs otherwise (other padding widths): equal up to float rounding
    assert all(abs(first[k]) < 1e-5 for k in ("rewards/chosen", "rewards/rejected", "rewards/margin")), first
    last_epoch = [r for r in records if r["epoch"] == records[-1]["epoch"]]
    accuracy = sum(r["rewards/accuracy"] for r in last_epoch) / len(last_epoch)
    print(f"\nlast epoch: reward accuracy {accuracy:.3f}, loss {last_epoch[-1]['loss']:.4f}")
    assert accuracy > 0.9 and last_epoch[-1]["rewards/margin"] > 0
    assert (tmp_path / "logs-ckpt" / "reference_logps.safetensors").is_file()
    assert (tmp_path / "logs-ckpt" / f"step-{records[-1]['step']}" / "reference_logps.safetensors").is_file()


# name: (flags, world size, data-parallel size, relative tolerance against DDP fp32 at that dp size)
CONFIGS = {
    "ddp": (["--plugin", "ddp", "--mixed_precision", "fp32"], 2, 2, 1e-6),
    "3d_pp2": (["--plugin", "3d", "--pp", "2", "--mixed_precision", "fp32"], 2, 1, 1e-4),
    "3d_tp2": (["--plugin", "3d", "--tp", "2", "--mixed_precision", "fp32"], 2, 1, 1e-4),
    "zero2": (["--plugin", "zero2", "--mixed_precision", "bf16"], 2, 2, 1e-3),
    "gemini_sharded": (["--plugin", "gemini", "--mixed_precision", "bf16"], 2, 2, 1e-2),
}
# Each case is 3 or 4 two-process runs (about a minute and a half on a shared 2-core machine): pp2, the
# layout whose criterion sees only its micro-batch, runs by default, the others with the slow tests.
FAST = ("3d_pp2",)


def matrix_flags(setup):
    return common(setup) + ["--batch_size", "1", "--accumulation_steps", "2", "--lr", "1e-3", "--save_interval", "2",
                            "--max_steps", "6"]


def by_step(records):
    return {r["step"]: r["loss"] for r in records if not r["skipped"]}


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in CONFIGS])
def test_plugin_resumes_exactly_and_matches_ddp(name, setup, tmp_path):
    flags, world, dp, tolerance = CONFIGS[name]
    flags = matrix_flags(setup) + flags
    env = SHARDED_GEMINI if name.startswith("gemini") else {}
    straight = train(flags + ["--save_dir", tmp_path / "a"], tmp_path / "a-logs", nproc=world, env=env)
    crashed = launch(flags + ["--save_dir", tmp_path / "b"], tmp_path / "b-logs", nproc=world,
                     env={**env, "COLOSSAL_HAMMER_FAULTS": "kill_mid_save@4"})
    assert crashed.returncode != 0 and (tmp_path / "b" / "step-2").is_dir()
    resumed = train(flags + ["--save_dir", tmp_path / "b", "--resume", "auto"], tmp_path / "b-logs", nproc=world,
                    env=env)
    assert resumed["info"]["start_step"] == 2
    assert "reference log-probs" not in resumed["output"]  # read from the checkpoint, not computed again
    a, b = by_step(straight["records"]), by_step(resumed["records"])
    assert sorted(a) == list(range(1, 7)) and [b[s] for s in range(3, 7)] == [a[s] for s in range(3, 7)]

    if name == "ddp":
        setup["refs"].setdefault(dp, straight)
    if dp not in setup["refs"]:
        setup["refs"][dp] = train(matrix_flags(setup) + ["--plugin", "ddp", "--mixed_precision", "fp32"],
                                  setup["base"] / f"ddp{dp}", nproc=dp)
    ref = by_step(setup["refs"][dp]["records"])
    worst = max(abs(a[s] - ref[s]) / abs(ref[s]) for s in a)
    print(f"\n{name}: largest relative difference to ddp {worst:.2e} (tolerance {tolerance:.0e})")
    assert abs(a[1] - math.log(2)) < 1e-5 and worst <= tolerance, (a, ref)


@pytest.mark.parametrize("case", ["sft_data_for_dpo", "pairs_without_dpo", "benchmark", "beta", "sequence_parallel"])
def test_refusals_are_one_line(case, setup, tokenizer_dir, tmp_path):
    from tests.training.sft_data import uneven_sft_dataset

    model = ["--pretrained", setup["model"], "--plugin", "ddp", "--max_length", "192"]
    args = {
        "sft_data_for_dpo": model + ["--task", "dpo", "--dataset",
                                     uneven_sft_dataset(tokenizer_dir, tmp_path / "sft", samples=4)],
        "pairs_without_dpo": model + ["--dataset", setup["data"]],
        "benchmark": model + ["--task", "dpo", "--benchmark"],
        "beta": model + ["--task", "dpo", "--dataset", setup["data"], "--beta", "0"],
        "sequence_parallel": ["--pretrained", setup["model"], "--dataset", setup["data"], "--task", "dpo", "--plugin",
                              "3d", "--tp", "2", "--enable_sequence_parallelism"],
    }[case]
    expected = {"sft_data_for_dpo": "holds no preference pairs: --task dpo needs",
                "pairs_without_dpo": "holds preference pairs: train it with --task dpo",
                "benchmark": "--task dpo: give --dataset DIR made by prepare_preference_dataset.py",
                "beta": "--beta must be > 0", "sequence_parallel": "--task dpo with --enable_sequence_parallelism"}[case]
    proc = launch(args, tmp_path / "logs", nproc=1)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and expected in errors[0], proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout


@pytest.mark.slow
def test_a_step_is_the_mean_over_its_pairs_however_split(setup, tmp_path):
    """Batch 2, batch 1 x accumulation 2 and 2 ranks x batch 1 see the same pairs per step: same loss, same
    gradient, although the pairs differ in length (a per-micro-batch mean would weigh them otherwise)."""
    flags = common(setup) + ["--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "3", "--lr", "1e-3",
                             "--grad_clip", "100", "--save_interval", "0"]
    runs = {"b2": train(flags + ["--batch_size", "2"], tmp_path / "b2", nproc=1),
            "b1 x acc2": train(flags + ["--batch_size", "1", "--accumulation_steps", "2"], tmp_path / "acc", nproc=1),
            "2 ranks x b1": train(flags + ["--batch_size", "1"], tmp_path / "ranks", nproc=2)}
    ref = runs["b2"]["records"]
    for name, run in runs.items():
        for got, want in zip(run["records"], ref):
            for key in ("loss", "grad_norm"):
                assert math.isclose(got[key], want[key], rel_tol=1e-5), (name, key, got, want)
            # rewards are beta x differences of summed log-probs (hundreds of nats in fp32, batched with other
            # padding): equal to rounding, ~1e-6
            for key in ("rewards/chosen", "rewards/rejected", "rewards/margin"):
                assert abs(got[key] - want[key]) < 1e-5, (name, key, got, want)
