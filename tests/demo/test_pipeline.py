"""The quick start at reduced size: Chinese learned, English kept, every stage exports and loads (the
upcycled MoE continuation as a Mixtral)."""

import json
import math

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from colossal_hammer.demo.pipeline import SCALES, Demo
from colossal_hammer.demo.pipeline import main as demo_main
from colossal_hammer.demo.upcycling import STEPS as UPCYCLING_STEPS


def test_quick_start_at_test_scale(tmp_path, capsys):
    results = demo_main(["--scale", "test", "--output_dir", str(tmp_path / "demo"), "--lora_lrs", "2e-3,5e-3"])
    # it ends with the one command that serves its SFT model
    assert f"python -m colossal_hammer.serve --model {tmp_path / 'demo' / 'models' / 'sft'} --port 8000" \
        in capsys.readouterr().out
    assert results["stage2"]["zh"] < results["base"]["zh"]
    assert results["stage2"]["en"] <= 1.10 * results["base"]["en"]
    for stage in ("base", "stage1", "stage2", "sft", "sft_lora", "dpo", "continue_dense", "continue_moe"):
        folder = tmp_path / "demo" / "models" / stage
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.get_input_embeddings().weight.shape[0] == len(AutoTokenizer.from_pretrained(folder))
    assert (tmp_path / "demo" / "report.png").stat().st_size > 10_000
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| stage2 |" in report and "merged_tokenizer" in report
    # every training run scored the held-out text as it went: Chinese learned, English kept, end to end
    assert "## Held-out bits per byte at the end of each training run" in report
    demo = Demo(tmp_path / "demo", SCALES["test"])
    curves = demo.heldout_curves()
    assert [name for name in demo.stage_starts] == ["base", "stage1", "stage2", "sft"]
    assert len(curves["zh"]) == len(curves["en"]) == 4 * 5  # 5 evaluations per run
    base_end = curves["zh"][4][1], curves["en"][4][1]
    stage2_end = curves["zh"][14][1], curves["en"][14][1]
    assert stage2_end[0] < base_end[0] and stage2_end[1] <= 1.10 * base_end[1]

    # post-training: category accuracy of each model beside chance, on held-out headlines
    accuracy = results["accuracy"]
    assert accuracy["chance"] == 0.25 and accuracy["n"] >= 300
    for model in ("stage2", "sft", "sft_lora", "dpo"):
        assert 0 <= accuracy[model] <= 1
    assert "## Category accuracy on held-out headlines" in report and "| DPO (on SFT) |" in report
    # DPO trained: its steps ran and its loss started at ln 2 (policy = reference)
    dpo = results["dpo"]
    assert dpo["steps"] >= 30 and dpo["pairs"] >= 300 and abs(dpo["first_loss"] - 0.6931) < 0.01
    # its pairs come from the categories the SFT got wrong on the validation questions, never the held-out ones
    questions = {name: [json.loads(line)["question"] for line in
                        (tmp_path / "demo" / "corpus" / f"{name}_questions.jsonl").read_text().splitlines()]
                 for name in ("validation", "category")}
    assert len(questions["validation"]) >= 300 and not set(questions["validation"]) & set(questions["category"])
    assert dpo["validation_n"] == len(questions["validation"])
    assert sum(dpo["sft_validation_errors"].values()) == round(dpo["validation_n"] * (1 - dpo["sft_validation_accuracy"]))
    assert dpo["categories"] == sorted(c for c, k in dpo["sft_validation_errors"].items() if k)
    prompts = [json.loads(line)["prompt"] for line in
               (tmp_path / "demo" / "corpus" / "dpo" / "pairs.jsonl").read_text().splitlines()]
    assert not {p.split("？", 1)[1] for p in prompts} & (set(questions["validation"]) | set(questions["category"]))
    # LoRA's learning rate: one run per candidate, the best on validation kept and scored on held-out
    choice = results["lora_lr_choice"]
    assert set(choice["lora"]) == {"0.002", "0.005"} and choice["validation_n"] == dpo["validation_n"]
    assert choice["lora"][f"{choice['chosen']:g}"] == max(choice["lora"].values())
    assert results["lora"]["lr"] == choice["chosen"]
    # LoRA: a small share of the weights trained, an adapter far smaller than the model, bits/byte measured
    lora = results["lora"]
    assert lora["trainable_params"] + lora["full_sft_trainable_params"] == lora["num_params"]  # base + adapters
    assert 0 < lora["trainable_params"] < 0.2 * lora["num_params"]
    assert 0 < lora["adapter_bytes"] < 0.2 * lora["full_model_bytes"]
    assert lora["zh"] > 0 and lora["en"] > 0
    assert "## SFT with LoRA adapters" in report

    # sparse upcycling: stage 2 continued dense and as a 4-expert Mixtral on the same tokens, both scored
    for name in ("continue_dense", "continue_moe"):
        assert all(math.isfinite(results[name][lang]) and results[name][lang] > 0 for lang in ("zh", "en"))
        assert f"| {name} |" in report
    moe = results["moe"]
    assert moe["steps"] == UPCYCLING_STEPS["test"]
    assert moe["tokens"]["continue_moe"] == moe["tokens"]["continue_dense"] > 0
    assert math.isfinite(moe["router_aux_loss"]) and moe["router_aux_loss"] > 0
    assert math.isfinite(moe["expert_load_cv"]) and moe["expert_load_cv"] >= 0
    assert len(moe["expert_load"]) == SCALES["test"].layers
    assert all(len(row) == 4 and abs(sum(row) - 1) < 1e-3 for row in moe["expert_load"])
    # the dense run trained on the demo's plugin, the MoE one with expert parallelism over both processes
    info = {name: json.loads((tmp_path / "demo" / "logs" / name / "run_info.json").read_text())
            for name in ("continue_dense", "continue_moe")}
    assert info["continue_dense"]["plugin_class"] == "LowLevelZeroPlugin"
    assert info["continue_moe"]["plugin_class"] == "MoeHybridParallelPlugin" and info["continue_moe"]["ep_size"] == 2
    assert moe["params"]["continue_dense"] < moe["moe_active_params"] < moe["params"]["continue_moe"]
    folder = tmp_path / "demo" / "models" / "continue_moe"
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_local_experts, config.num_experts_per_tok) == ("mixtral", 4, 2)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "MixtralForCausalLM"
    assert AutoConfig.from_pretrained(tmp_path / "demo" / "models" / "continue_dense").model_type == "llama"
    assert "## Sparse upcycling: stage 2 continued as a 4-expert MoE" in report
