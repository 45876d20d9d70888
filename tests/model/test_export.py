"""export: a checkpoint becomes a standalone HF folder whose logits equal the trained model's."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from colossal_hammer.model.export import main as export_main, strip_wrapper_prefixes
from tests.distributed import TINY, train


def test_prefixes_are_stripped_by_name():
    assert strip_wrapper_prefixes("module._orig_mod.model.layers.0.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    assert strip_wrapper_prefixes("model._orig_mod.embed_tokens.weight") == "model.embed_tokens.weight"
    # a real first component is never dropped
    assert strip_wrapper_prefixes("lm_head.weight") == "lm_head.weight"
    assert strip_wrapper_prefixes("model.module_list.0.weight") == "model.module_list.0.weight"


@pytest.mark.parametrize("plugin, precision", [("ddp", "fp32"), ("zero2", "bf16")])
def test_exported_model_matches_the_checkpoint(plugin, precision, tmp_path):
    train(TINY + ["--plugin", plugin, "--mixed_precision", precision, "--max_steps", "2", "--save_dir",
                  tmp_path / "ckpt"], tmp_path / "logs")
    step = tmp_path / "ckpt" / "step-2"
    result = export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "hf")])
    # the same attention kernel on both sides: eager and SDPA differ in the last bits
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    trained = AutoModelForCausalLM.from_pretrained(step / "modeling", attn_implementation="eager")
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, trained(ids).logits)
    assert result["dtype"] == ("float32" if precision == "fp32" else "bfloat16")
    assert list((tmp_path / "hf").glob("*.safetensors")) and not list((tmp_path / "hf").glob("*.bin"))
    half = export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "hf16"), "--dtype", "fp16"])
    assert half["dtype"] == "float16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf16", torch_dtype="auto").dtype == torch.float16
