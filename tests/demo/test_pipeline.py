"""The quick start at reduced size: Chinese learned, English kept, every stage exports and loads."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from colossal_hammer.demo.pipeline import SCALES, Demo
from colossal_hammer.demo.pipeline import main as demo_main


def test_quick_start_at_test_scale(tmp_path, capsys):
    results = demo_main(["--scale", "test", "--output_dir", str(tmp_path / "demo")])
    # it ends with the one command that serves its SFT model
    assert f"python -m colossal_hammer.serve --model {tmp_path / 'demo' / 'models' / 'sft'} --port 8000" \
        in capsys.readouterr().out
    assert results["stage2"]["zh"] < results["base"]["zh"]
    assert results["stage2"]["en"] <= 1.10 * results["base"]["en"]
    for stage in ("base", "stage1", "stage2", "sft", "sft_lora", "dpo"):
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
    # LoRA: a small share of the weights trained, an adapter far smaller than the model, bits/byte measured
    lora = results["lora"]
    assert lora["trainable_params"] + lora["full_sft_trainable_params"] == lora["num_params"]  # base + adapters
    assert 0 < lora["trainable_params"] < 0.2 * lora["num_params"]
    assert 0 < lora["adapter_bytes"] < 0.2 * lora["full_model_bytes"]
    assert lora["zh"] > 0 and lora["en"] > 0
    assert "## SFT with LoRA adapters" in report
