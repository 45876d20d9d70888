"""export: a checkpoint becomes a standalone HF folder whose logits equal the trained model's.

The export streams tensor by tensor; `reference_export` is the export as it was before (load every
weight into a randomly initialised fp32 model, then save_pretrained), and the two must agree bit for bit.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from colossal_hammer.errors import InputError
from colossal_hammer.model.build import DTYPES, UNPADDED_VOCAB_KEY
from colossal_hammer.model.export import DTYPE_NAMES, export, main as export_main, strip_wrapper_prefixes
from colossal_hammer.model.shards import parse_size
from colossal_hammer.model.folders import hf_folder_of
from tests.conftest import save_tiny_llama
from tests.distributed import TINY, train


def reference_export(modeling: Path, out: Path, dtype=None) -> None:
    """The export before streaming: every weight in memory, a full fp32 model, save_pretrained."""
    state = {}
    for path in sorted(modeling.glob("*.safetensors")):
        state.update({strip_wrapper_prefixes(k): v for k, v in load_file(path).items()})
    config = AutoConfig.from_pretrained(modeling)
    size = getattr(config, UNPADDED_VOCAB_KEY, None)
    if size is not None:
        padded, config.vocab_size = config.vocab_size, size
        delattr(config, UNPADDED_VOCAB_KEY)
        state = {k: v[:size] if k.endswith(("embed_tokens.weight", "lm_head.weight")) and v.shape[0] == padded
                 else v for k, v in state.items()}
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model.to(DTYPES[dtype] if dtype else next(iter(state.values())).dtype).save_pretrained(out)


def tensors_of(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def assert_same_export(streamed: Path, reference: Path) -> None:
    a, b = tensors_of(streamed), tensors_of(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    for name in ("config.json", "generation_config.json"):
        assert json.loads((streamed / name).read_text()) == json.loads((reference / name).read_text()), name


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
    reference_export(step / "modeling", tmp_path / "reference")
    assert_same_export(tmp_path / "hf", tmp_path / "reference")
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
    reference_export(step / "modeling", tmp_path / "reference16", "fp16")
    assert_same_export(tmp_path / "hf16", tmp_path / "reference16")


def sharded_checkpoint(out: Path, tied=False, padded_to=None, prefix="") -> Path:
    """A step-N/modeling folder written as several safetensors shards + index, as a sharded save leaves it;
    `padded_to` adds zero vocabulary rows as build.pad_vocabulary does, `prefix` a wrapper's key prefix."""
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    modeling = out / "step-4" / "modeling"
    model.save_pretrained(modeling, max_shard_size="40KB")
    if padded_to or prefix:
        for path in modeling.glob("*.safetensors"):
            state = load_file(path)
            state = {prefix + k: torch.cat([v, v.new_zeros(padded_to - v.shape[0], v.shape[1])])
                     if padded_to and k.endswith(("embed_tokens.weight", "lm_head.weight")) else v
                     for k, v in state.items()}
            save_file(state, path, metadata={"format": "pt"})
    if padded_to:
        saved = json.loads((modeling / "config.json").read_text())
        saved.update(vocab_size=padded_to, **{UNPADDED_VOCAB_KEY: 300})
        (modeling / "config.json").write_text(json.dumps(saved))
    assert len(list(modeling.glob("*.safetensors"))) > 3 and (modeling / "model.safetensors.index.json").is_file()
    return modeling.parent


@pytest.mark.parametrize("tied, padded_to, prefix", [(False, None, ""), (True, 320, "module._orig_mod."),
                                                     (False, 384, "")])
def test_sharded_checkpoint_streams_into_shards(tied, padded_to, prefix, tmp_path, monkeypatch):
    step = sharded_checkpoint(tmp_path / "ckpt", tied, padded_to, prefix)
    # tensors are read in blocks of rows: 1000 bytes is 7 rows of 64 bf16, so every tensor takes several
    # blocks and the vocabulary trim falls inside one
    monkeypatch.setattr("colossal_hammer.model.export.BLOCK_BYTES", 1000)
    result = export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "hf"), "--max_shard_size", "50KB"])
    reference_export(step / "modeling", tmp_path / "reference")
    assert_same_export(tmp_path / "hf", tmp_path / "reference")
    # shards no larger than asked (a bigger tensor alone), and an index naming every tensor's file
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(result["weight_files"]) and len(result["weight_files"]) > 2
    for name in result["weight_files"]:
        tensors = load_file(tmp_path / "hf" / name)
        assert sum(t.nbytes for t in tensors.values()) <= 50_000 or len(tensors) == 1
        assert all(index["weight_map"][k] == name for k in tensors)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors_of(tmp_path / "hf").values())
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype="auto", attn_implementation="eager")
    assert exported.config.vocab_size == 300 and exported.dtype == torch.bfloat16
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "reference", torch_dtype="auto",
                                                     attn_implementation="eager")
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, reference(ids).logits)
    # one file this time, and the earlier shards and index are gone rather than mixed with it
    again = export_main(["--checkpoint", str(step), "--output_dir", str(tmp_path / "hf")])
    assert again["weight_files"] == ["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "hf").glob("model*")) == ["model.safetensors"]
    assert_same_export(tmp_path / "hf", tmp_path / "reference")


def test_export_refuses_missing_and_misshapen_weights(tmp_path):
    step = sharded_checkpoint(tmp_path / "ckpt")
    modeling = step / "modeling"
    last = sorted(modeling.glob("*.safetensors"))[-1]
    state = load_file(last)
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, last, metadata={"format": "pt"})
    with pytest.raises(InputError, match=f"missing \\['{dropped}'\\]"):
        export(str(step), str(tmp_path / "out"))
    state[dropped] = state[dropped][..., :-1].contiguous()
    save_file(state, last, metadata={"format": "pt"})
    with pytest.raises(InputError, match=f"{dropped} has shape"):
        export(str(step), str(tmp_path / "out"))


def test_max_shard_size_parses_like_transformers():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("500kb") == 500_000
    assert parse_size("1234") == 1234
    for bad in ("", "0", "5 gigabytes", "-1GB"):
        with pytest.raises(ValueError):
            parse_size(bad)


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
