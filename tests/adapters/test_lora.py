"""LoRA on the Booster (2 processes on CPU): only adapters train, the base stays bit-identical, a SIGKILLed
run resumes exactly, the adapter folder loads in peft, and merged weights give the adapter model's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import REPO, launch, train
from tests.training.sft_data import tiny_model, uneven_sft_dataset

WORKER = Path(__file__).with_name("lora_worker.py")


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("lora")
    return {"data": uneven_sft_dataset(tokenizer_dir, base / "sft", samples=24),
            "model": tiny_model(tokenizer_dir, base / "model")}


def flags(setup, *more):
    return ["--pretrained", setup["model"], "--dataset", setup["data"], "--max_length", "192", "--batch_size", "1",
            "--accumulation_steps", "2", "--lr", "5e-3", "--seed", "5", "--lora_rank", "4", "--lora_alpha", "8",
            *more]


def run_worker(args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), str(out),
           *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return json.loads(out.read_text())


def logits(model, vocab):
    ids = torch.randint(3, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


# zero2 runs by default (per-rank optimizer files, fp32 masters of bf16 adapters); ddp's path is the export
# test's, its resume a slow test
# each case is four 2-process runs; the adapters' export, merge and DPO tests below run by default
@pytest.mark.parametrize("plugin, precision", [pytest.param("zero2", "bf16", marks=pytest.mark.slow),
                                               pytest.param("ddp", "fp32", marks=pytest.mark.slow)])
def test_lora_trains_adapters_only_and_resumes_exactly(plugin, precision, setup, tmp_path):
    common = flags(setup, "--plugin", plugin, "--mixed_precision", precision, "--max_steps", "4",
                   "--save_interval", "2")
    result = run_worker(common + ["--save_dir", tmp_path / "a", "--tensorboard_dir", tmp_path / "a-logs"],
                        tmp_path / "weights.json")
    assert result["compared"] > 10 and result["changed"] == [] and result["frozen_but_trainable"] == []
    info = json.loads((tmp_path / "a-logs" / "run_info.json").read_text())
    assert 0 < info["trainable_params"] < 0.2 * info["num_params"]
    records = [json.loads(line) for line in (tmp_path / "a-logs" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"]  # the adapters learn

    step = tmp_path / "a" / "step-4"
    adapter = load_file(step / "modeling" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(torch.count_nonzero(v) for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    assert not (step / "modeling" / "config.json").exists()  # the base's weights are not in the checkpoint

    crashed = launch(common + ["--save_dir", tmp_path / "b"], tmp_path / "b-logs",
                     env={"COLOSSAL_HAMMER_FAULTS": "kill_mid_save@4"})
    assert crashed.returncode != 0
    resumed = train(common + ["--save_dir", tmp_path / "b", "--resume", "auto"], tmp_path / "b-logs")
    assert resumed["info"]["start_step"] == 2
    a = {r["step"]: r["loss"] for r in records}
    b = {r["step"]: r["loss"] for r in resumed["records"]}
    assert [b[s] for s in (3, 4)] == [a[s] for s in (3, 4)]  # bit-identical
    # a resume without the LoRA flags is refused in one line
    at = common.index("--lora_rank")
    other = launch(common[:at] + common[at + 2:] + ["--load_checkpoint", step, "--save_dir", tmp_path / "c"],
                   tmp_path / "c-logs")
    assert other.returncode != 0 and "saved with --lora_rank 4, this run has no --lora_rank" in other.stdout


def test_adapter_exports_load_in_peft_and_merge_to_the_same_logits(setup, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from colossal_hammer.model.export import main as export_main

    train(flags(setup, "--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "2", "--save_interval", "0",
                "--lora_target_modules", "q_proj", "--lora_modules_to_save", "embed_tokens,lm_head",
                "--save_dir", tmp_path / "ckpt"), tmp_path / "logs")
    step = tmp_path / "ckpt" / "step-2"
    export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "adapter")])
    export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "merged"), "--merge_lora"])

    base = AutoModelForCausalLM.from_pretrained(setup["model"], torch_dtype=torch.float32)
    vocab = base.config.vocab_size
    before = base.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32).eval()
    gap = (logits(adapted, vocab) - logits(merged, vocab)).abs().max().item()
    print(f"\nmerged vs adapter logits: max abs diff {gap:.2e}")
    assert gap <= 1e-5

    # modules_to_save trained the embeddings and lm_head; adapters only on q_proj: nothing else moved
    after = merged.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    expected = {"model.embed_tokens.weight", "lm_head.weight"} | {
        k for k in before if k.endswith("self_attn.q_proj.weight")}
    assert set(changed) == expected, changed


@pytest.mark.parametrize("extra, message", [
    (["--plugin", "gemini"], "GeminiPlugin has no LoRA support; use --plugin zero2"),
    (["--plugin", "3d"], "cannot shard a peft model (tp > 1 unsupported, pp/zero fail in its Llama policy); use "
                         "--plugin zero2"),
    (["--plugin", "zero2", "--lora_quantize"], "needs a CUDA GPU"),
    (["--plugin", "zero2", "--lora_target_modules", "q_proj,wq"], "wq name no module of this model"),
])
def test_lora_refusals_are_one_line(extra, message, setup, tmp_path):
    proc = launch(flags(setup, "--max_steps", "1", *extra), tmp_path / "logs", nproc=1)
    assert proc.returncode == 2 and message in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout


def test_dpo_with_lora_starts_at_its_reference_and_keeps_the_base(setup, tokenizer_dir, tmp_path):
    """--task dpo --lora_rank: the adapters start at zero (B = 0), so the policy is the reference (loss ln 2);
    the preference is learned by the adapters alone."""
    import math

    from tests.training.dpo_data import preference_dataset

    pairs = preference_dataset(tokenizer_dir, tmp_path / "pairs", pairs=16)
    args = ["--pretrained", setup["model"], "--dataset", pairs, "--task", "dpo", "--max_length", "160",
            "--seed", "5", "--plugin", "zero2", "--mixed_precision", "bf16", "--batch_size", "2", "--num_epochs", "3",
            "--lr", "1e-2", "--save_interval", "0", "--lora_rank", "8", "--lora_alpha", "16",
            "--save_dir", tmp_path / "ckpt", "--tensorboard_dir", tmp_path / "logs"]
    result = run_worker(args, tmp_path / "weights.json")
    assert result["compared"] > 10 and result["changed"] == []
    records = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert abs(records[0]["loss"] - math.log(2)) < 1e-3, records[0]  # bf16 forward
    assert records[-1]["rewards/margin"] > 0 and records[-1]["loss"] < records[0]["loss"]
