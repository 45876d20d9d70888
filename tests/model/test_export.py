"""export: a checkpoint becomes a standalone HF folder whose logits equal the trained model's."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from colossal_hammer.errors import InputError
from colossal_hammer.model.build import DTYPES
from colossal_hammer.model.export import DTYPE_NAMES, main as export_main, strip_wrapper_prefixes
from colossal_hammer.model.folders import hf_folder_of
from tests.conftest import save_tiny_llama
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


def test_dtype_names_are_the_build_table():
    assert sorted(DTYPE_NAMES) == sorted(DTYPES)


def test_hf_folder_of_checkpoint_or_hf_folder(tmp_path):
    (tmp_path / "step-3" / "modeling").mkdir(parents=True)
    (tmp_path / "step-3" / "modeling" / "config.json").write_text("{}")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "other").mkdir()
    assert hf_folder_of(str(tmp_path / "step-3")) == str(tmp_path / "step-3" / "modeling")
    assert hf_folder_of(str(tmp_path / "step-3" / "modeling")) == str(tmp_path / "step-3" / "modeling")
    assert hf_folder_of(str(tmp_path / "hf")) == str(tmp_path / "hf")
    for bad, words in [("other", "neither a checkpoint"), ("missing", "no such folder"),
                       ("hf/config.json", "is a file")]:
        with pytest.raises(InputError, match=words):
            hf_folder_of(str(tmp_path / bad), "--load_weights_only")


def test_export_without_tokenizer_warns_and_tokenizer_dir_adds_one(tokenizer_dir, tmp_path, capsys):
    """A --model_config run saves no tokenizer: the export says so in one line, --tokenizer_dir adds one."""
    save_tiny_llama(tokenizer_dir, tmp_path / "src")
    step = tmp_path / "ckpt" / "step-1" / "modeling"
    step.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (step / name).write_bytes((tmp_path / "src" / name).read_bytes())
    bare = export_main(["--checkpoint", str(step.parent), "--output_dir", str(tmp_path / "bare")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert bare["tokenizer_files"] == [] and len(warnings) == 1 and "--tokenizer_dir" in warnings[0]
    full = export_main(["--checkpoint", str(step.parent), "--output_dir", str(tmp_path / "full"),
                        "--tokenizer_dir", tokenizer_dir])
    assert "warning:" not in capsys.readouterr().err
    assert {"tokenizer.model", "tokenizer.json"} <= set(full["tokenizer_files"])
    assert (tmp_path / "full" / "tokenizer.json").is_file()
