"""--rope_theta and --rope_scaling: set on the model before it is built, kept in the checkpoint's and the
export's config.json, and loaded from the export by transformers with the rotary embedding they describe."""

import json

import torch
from transformers import AutoModelForCausalLM

from colossal_hammer.model.export import export
from tests.distributed import launch, train

TINY_SHORT = ["--model_config", "tiny", "--benchmark", "--num_samples", "8", "--batch_size", "2", "--seed", "3",
              "--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "1"]


def test_yarn_scaling_and_theta_reach_the_export(tmp_path):
    train(TINY_SHORT + ["--max_length", "64", "--rope_theta", "20000", "--rope_scaling", "yarn", "--rope_factor", "4",
                        "--save_dir", tmp_path / "ckpt"], tmp_path / "logs", nproc=1)
    saved = json.loads((tmp_path / "ckpt" / "step-1" / "modeling" / "config.json").read_text())
    export(str(tmp_path / "ckpt" / "step-1"), str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    for values in (saved, config):  # the tiny preset's context is 2048
        assert values["rope_theta"] == 20000 and values["max_position_embeddings"] == 8192
        assert values["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32)
    rotary = model.model.rotary_emb
    assert rotary.rope_type == "yarn" and rotary.attention_scaling > 1  # YaRN's attention temperature
    reference = AutoModelForCausalLM.from_config(model.config.__class__(**{**config, "rope_scaling": None,
                                                                           "max_position_embeddings": 2048}))
    assert not torch.allclose(rotary.inv_freq, reference.model.rotary_emb.inv_freq)  # the scaling is applied
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(256).view(1, -1) % 512).logits).all()  # past the old 64 tokens


def test_a_resume_with_other_rope_flags_is_refused(tmp_path):
    flags = TINY_SHORT + ["--max_length", "32", "--save_dir", tmp_path / "ckpt"]
    train(flags + ["--rope_scaling", "linear", "--rope_factor", "2"], tmp_path / "logs", nproc=1)
    proc = launch(flags + ["--max_steps", "2", "--resume", "auto"], tmp_path / "logs2", nproc=1)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout[-3000:]
    assert "was saved with --rope_scaling linear --rope_factor 2.0, this run has no --rope_scaling no --rope_factor" \
        in errors[0]
