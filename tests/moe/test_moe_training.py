"""MoE models through train.py: --plugin moe with experts split over 2 ranks (all_to_all over gloo) trains,
matches DDP on the same model and data, resumes bit-identically after a SIGKILL mid-save, and exports a
folder transformers' MixtralForCausalLM loads; bad combinations are refused in one line; the router's loss
weights change what is optimised."""

import math

import pytest
import torch

from tests.distributed import GRAD_NORM_BF16, by_step, largest_difference, launch, train
from tests.training.sft_data import uneven_sft_dataset

SAMPLES = 24


def save_tiny_mixtral(tokenizer_dir, out, seed: int = 0):
    """A random top-2-of-4 Mixtral sized to the tokenizer."""
    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           sliding_window=None)
    model = MixtralForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("moe")
    return {"data": uneven_sft_dataset(tokenizer_dir, base / "sft", samples=SAMPLES),
            "model": save_tiny_mixtral(tokenizer_dir, base / "mixtral"), "base": base}


def common(setup):
    return ["--pretrained", setup["model"], "--dataset", setup["data"], "--max_length", "192", "--batch_size", "1",
            "--accumulation_steps", "2", "--num_epochs", "1", "--save_interval", "2", "--lr", "2e-3", "--seed", "5",
            "--checkpoint_shard_size", "0.05"]


# name: (flags, data-parallel size, relative tolerance against DDP fp32 with as many processes as that;
# as tests/training/test_plugin_matrix.py's bf16 rows)
CONFIGS = {
    "moe_ep2_zero1": (["--plugin", "moe", "--ep", "2", "--zero_stage", "1", "--mixed_precision", "bf16"], 2, 1e-3),
    "moe_tp2": (["--plugin", "moe", "--tp", "2", "--mixed_precision", "bf16"], 1, 1e-3),
    "zero2": (["--plugin", "zero2", "--mixed_precision", "bf16"], 2, 1e-3),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "moe_ep2_zero1" else pytest.mark.slow)
                                  for n in CONFIGS])
def test_moe_trains_resumes_exports_and_matches_ddp(name, setup, tmp_path):
    flags, dp, tolerance = CONFIGS[name]
    flags = common(setup) + flags
    straight = train(flags + ["--save_dir", tmp_path / "a"], tmp_path / "a-logs")
    records = straight["records"]
    if name.startswith("moe"):
        assert straight["info"]["plugin_class"] == "MoeHybridParallelPlugin"
    if name == "moe_ep2_zero1":
        assert straight["info"]["ep_size"] == 2 and straight["info"]["zero_stage"] == 1
    assert all(math.isfinite(r["loss"]) and r["router_aux_loss"] > 0 for r in records)
    assert all(len(r["expert_load"]) == 2 and all(len(layer) == 4 for layer in r["expert_load"]) for r in records)

    crashed = launch(flags + ["--save_dir", tmp_path / "b"], tmp_path / "b-logs",
                     env={"COLOSSAL_HAMMER_FAULTS": "kill_mid_save@4"})
    assert crashed.returncode != 0 and (tmp_path / "b" / "step-2").is_dir()
    resumed = train(flags + ["--save_dir", tmp_path / "b", "--resume", "auto"], tmp_path / "b-logs")
    assert resumed["info"]["start_step"] == 2
    a, b = by_step(records), by_step(resumed["records"])
    assert [b[s] for s in range(3, max(a) + 1)] == [a[s] for s in range(3, max(a) + 1)]  # bit-identical
    aux_a = {r["step"]: r["router_aux_loss"] for r in records}
    assert all(r["router_aux_loss"] == aux_a[r["step"]] for r in resumed["records"] if r["step"] > 2)
    if name == "moe_ep2_zero1":
        optimizer = sorted(p.name for p in (tmp_path / "b" / "step-2" / "optimizer").iterdir())
        assert "rank-0.json" in optimizer and "rank-1.json" in optimizer
        # each rank's file holds its own experts' states: another expert split is refused, in one line
        other = launch(common(setup) + ["--plugin", "moe", "--ep", "1", "--zero_stage", "1", "--mixed_precision",
                                        "bf16", "--load_checkpoint", tmp_path / "b" / "step-2"], tmp_path / "c")
        errors = [line for line in other.stdout.splitlines() if line.startswith("error:")]
        assert other.returncode != 0 and len(errors) == 1 and "resume it with --ep 2" in errors[0], other.stdout[-3000:]

    ref = train(common(setup) + ["--plugin", "ddp", "--mixed_precision", "fp32"], tmp_path / "ddp", nproc=dp)["records"]
    worst = {key: largest_difference(records, ref, key) for key in ("loss", "grad_norm")}
    print(f"\n{name}: {len(a)} steps, largest relative difference to ddp: loss {worst['loss']:.2e}, grad norm "
          f"{worst['grad_norm']:.2e} (tolerances {tolerance:.0e}, {GRAD_NORM_BF16:.0e})")
    assert worst["loss"] <= tolerance and worst["grad_norm"] <= GRAD_NORM_BF16, worst

    if name == "moe_ep2_zero1":
        check_export(tmp_path / "b" / f"step-{max(a)}", tmp_path / "hf")


def check_export(step, out):
    """The export is a MixtralForCausalLM whose every expert comes from the rank that trained it."""
    from transformers import AutoModelForCausalLM, MixtralForCausalLM

    from colossal_hammer.model.export import main as export_main

    export_main(["--checkpoint", str(step), "--output_dir", str(out), "--dtype", "fp32"])
    exported = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    saved = MixtralForCausalLM.from_pretrained(step / "modeling", torch_dtype=torch.float32).eval()
    assert isinstance(exported, MixtralForCausalLM) and exported.config.num_local_experts == 4
    ids = torch.randint(0, exported.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        real = exported.config.vocab_size  # the export trims the rows padded for training
        gap = (exported(ids).logits - saved(ids).logits[..., :real]).abs().max().item()
    assert gap == 0.0
    # rank 1 held and saved experts 2 and 3, rank 0 experts 0 and 1: four different trained experts
    state = exported.state_dict()
    experts = [state[f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight"] for e in range(4)]
    assert all(not torch.equal(experts[i], experts[j]) for i in range(4) for j in range(i + 1, 4))


def test_router_coefficients_reach_the_optimizer(tmp_path):
    """The aux and z terms are optimised: the first step's LM loss is the same whatever their weights (the
    same model and batch), its gradient is not, and so neither is the next step's loss."""
    flags = ["--model_config", "tiny_moe", "--benchmark", "--num_samples", "12", "--max_length", "32",
             "--batch_size", "4", "--plugin", "ddp", "--mixed_precision", "fp32", "--lr", "1e-2", "--seed", "1",
             "--save_interval", "0", "--warmup_steps", "0"]
    runs = {name: train(flags + extra, tmp_path / name, nproc=1)["records"] for name, extra in (
        ("none", ["--router_aux_loss_coef", "0"]), ("aux", ["--router_aux_loss_coef", "0.5"]),
        ("z", ["--router_aux_loss_coef", "0", "--router_z_loss_coef", "0.5"]))}
    first = {name: records[0] for name, records in runs.items()}
    assert first["none"]["loss"] == first["aux"]["loss"] == first["z"]["loss"]
    assert first["none"]["router_aux_loss"] == first["aux"]["router_aux_loss"] > 0  # logged even when not optimised
    assert len({r["grad_norm"] for r in first.values()}) == 3
    assert len({records[1]["loss"] for records in runs.values()}) == 3


@pytest.mark.slow  # two 2-process runs
def test_gathered_checkpoint_resumes_on_another_expert_layout(tmp_path):
    """--optimizer_checkpoint gathered: experts saved from 2 expert-parallel ranks resume on ep 1 (every rank
    holds every expert) with the loss the uninterrupted ep 2 run had."""
    flags = ["--model_config", "tiny_moe", "--benchmark", "--num_samples", "16", "--max_length", "64",
             "--batch_size", "2", "--plugin", "moe", "--zero_stage", "1", "--max_steps", "3", "--save_interval", "2",
             "--optimizer", "adamw", "--optimizer_checkpoint", "gathered"]
    ep2 = train(flags + ["--ep", "2", "--save_dir", tmp_path / "a"], tmp_path / "a-logs")["records"]
    ep1 = train(flags + ["--ep", "1", "--load_checkpoint", tmp_path / "a" / "step-2"], tmp_path / "b-logs")
    assert ep1["info"]["start_step"] == 2 and ep1["info"]["ep_size"] == 1
    assert ep1["records"][-1]["loss"] == pytest.approx(ep2[-1]["loss"], rel=1e-6)


@pytest.mark.slow  # two 2-process runs, about a minute
def test_dpo_on_a_mixtral_with_experts_split_matches_ddp(tokenizer_dir, tmp_path):
    """--task dpo optimises the router's terms too: with experts over 2 ranks it starts at ln 2 (the policy is
    its reference) and follows ddp fp32 on the same pairs."""
    from tests.training.dpo_data import preference_dataset

    data = preference_dataset(tokenizer_dir, tmp_path / "pairs", pairs=16)
    flags = ["--pretrained", save_tiny_mixtral(tokenizer_dir, tmp_path / "mixtral"), "--dataset", data,
             "--task", "dpo", "--max_length", "160", "--seed", "5", "--batch_size", "1", "--accumulation_steps", "2",
             "--lr", "1e-3", "--save_interval", "0"]
    moe = train(flags + ["--plugin", "moe", "--ep", "2", "--zero_stage", "1", "--mixed_precision", "bf16"],
                tmp_path / "moe")["records"]
    ddp = train(flags + ["--plugin", "ddp", "--mixed_precision", "fp32"], tmp_path / "ddp")["records"]
    assert abs(moe[0]["loss"] - math.log(2)) < 1e-3 and len(moe) == len(ddp) == 4
    assert all(r["router_aux_loss"] > 0 and "rewards/accuracy" in r for r in moe)
    worst = max(abs(a["loss"] - b["loss"]) / b["loss"] for a, b in zip(moe, ddp))
    print(f"\nDPO on a Mixtral, moe ep2 vs ddp: largest relative difference {worst:.2e}")
    assert worst < 2e-3


def test_lora_on_a_mixtral_trains_adapters_and_merges(setup, tmp_path):
    """Adapters on attention and every expert (w1, w2, w3) of a Mixtral under zero2; the routers stay frozen but
    their aux loss still reaches the adapters. The merged export is a Mixtral."""
    from transformers import AutoModelForCausalLM, MixtralForCausalLM

    from colossal_hammer.model.export import main as export_main

    run = train(["--pretrained", setup["model"], "--dataset", setup["data"], "--max_length", "192", "--batch_size", "2",
                 "--plugin", "zero2", "--mixed_precision", "bf16", "--lr", "2e-3", "--seed", "5", "--max_steps", "3",
                 "--lora_rank", "4", "--lora_target_modules", "q_proj,v_proj,w1,w2,w3", "--save_interval", "0",
                 "--save_dir", tmp_path / "ckpt"], tmp_path / "logs")
    assert run["info"]["trainable_params"] < run["info"]["num_params"] / 5
    assert all(math.isfinite(r["loss"]) and r["router_aux_loss"] > 0 for r in run["records"])
    export_main(["--checkpoint", str(tmp_path / "ckpt" / "step-3"), "--output_dir", str(tmp_path / "merged"),
                 "--merge_lora", "--base_model", setup["model"], "--dtype", "fp32"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(setup["model"], torch_dtype=torch.float32)
    assert isinstance(merged, MixtralForCausalLM)
    expert = "model.layers.0.block_sparse_moe.experts.3.w2.weight"
    router = "model.layers.0.block_sparse_moe.gate.weight"
    assert not torch.equal(merged.state_dict()[expert], base.state_dict()[expert])  # the adapter merged in
    assert torch.equal(merged.state_dict()[router], base.state_dict()[router])  # frozen


@pytest.mark.parametrize("flags, nproc, message", [
    (["--model_config", "tiny", "--plugin", "moe"], 1, "--plugin moe: the model is a dense llama"),
    (["--model_config", "tiny_moe", "--plugin", "3d"], 1, "train MoE models with --plugin moe"),
    (["--model_config", "tiny_moe", "--plugin", "moe", "--ep", "2", "--zero_stage", "2"], 1, "use --zero_stage 1"),
    (["--model_config", "tiny_moe", "--plugin", "ddp", "--ep", "2"], 1, "above 1 only with --plugin moe"),
    (["--model_config", "tiny_moe", "--plugin", "moe", "--zero_stage", "1"], 1, "ZeRO shards nothing there"),
    (["--model_config", "tiny_moe", "--plugin", "moe", "--lora_rank", "4"], 1, "--lora_rank under --plugin moe"),
    pytest.param(["--model_config", "tiny_moe", "--plugin", "moe", "--ep", "4", "--zero_stage", "1"], 2,
                 "must divide the data-parallel size 2", marks=pytest.mark.slow),
    (["--model_config", "tiny_moe", "--plugin", "moe", "--ep", "2"], 2, "use --zero_stage 1"),
])
def test_bad_moe_combinations_are_refused_in_one_line(flags, nproc, message, tmp_path):
    proc = launch(flags + ["--benchmark", "--num_samples", "8", "--max_length", "32"], tmp_path / "logs", nproc=nproc)
    # one process exits 2 itself; torchrun reports a failed worker with exit 1
    assert proc.returncode == (2 if nproc == 1 else 1) and message in proc.stdout, proc.stdout[-3000:]
    # no rank prints a traceback (torchrun prints its own for the failed worker: a known wart of the launcher)
    assert proc.stdout.count("Traceback") == (0 if nproc == 1 else proc.stdout.count("ChildFailedError:"))
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
