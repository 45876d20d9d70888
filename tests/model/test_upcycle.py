"""Sparse upcycling: the Mixtral made from a dense Llama computes the dense model's logits, keeps its dtype
and tokenizer, and refuses what it cannot copy exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralForCausalLM

from colossal_hammer.model.upcycle import main as upcycle_main
from tests.conftest import save_tiny_llama


def logits(model, vocab):
    ids = torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def test_upcycled_mixtral_computes_the_dense_logits(tokenizer_dir, tmp_path):
    dense_dir = save_tiny_llama(tokenizer_dir, tmp_path / "dense", hidden=64, layers=2)
    result = upcycle_main(["--model", str(dense_dir), "--output_dir", str(tmp_path / "moe"), "--num_experts", "4",
                           "--top_k", "2", "--max_shard_size", "200KB"])
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, torch_dtype=torch.float32).eval()
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", torch_dtype=torch.float32).eval()
    assert isinstance(moe, MixtralForCausalLM) and moe.config.num_local_experts == 4
    assert moe.config.num_experts_per_tok == 2 and moe.config.router_aux_loss_coef == 0.02
    gap = (logits(dense, dense.config.vocab_size) - logits(moe, dense.config.vocab_size)).abs().max().item()
    print(f"\nupcycled vs dense logits: max abs diff {gap:.2e}")
    assert gap <= 1e-5

    # every expert is the dense MLP; the routers are small, random, and differ between layers
    state, dense_state = moe.state_dict(), dense.state_dict()
    for layer in range(2):
        for e in range(4):
            for w, name in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                assert torch.equal(state[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}.weight"],
                                   dense_state[f"model.layers.{layer}.mlp.{name}.weight"])
    routers = [state[f"model.layers.{layer}.block_sparse_moe.gate.weight"] for layer in range(2)]
    assert all(0 < r.std() < 0.05 for r in routers) and not torch.equal(routers[0], routers[1])
    # the parameter count: 4 experts' MLPs, of which 2 are active per token
    mlp = sum(v.numel() for k, v in dense_state.items() if ".mlp." in k)
    assert result["params"] == sum(v.numel() for v in state.values())
    assert result["params"] - result["active_params"] == 2 * mlp
    assert len(result["weight_files"]) > 1 and (tmp_path / "moe" / "tokenizer_config.json").is_file()


def test_dtype_is_kept_and_biases_are_refused(tmp_path, capsys):
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    upcycle_main(["--model", str(tmp_path / "bf16"), "--output_dir", str(tmp_path / "moe"), "--num_experts", "2",
                  "--top_k", "1"])
    saved = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert saved["torch_dtype"] == "bfloat16" and saved["tie_word_embeddings"] is True
    weights = load_file(tmp_path / "moe" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16} and "lm_head.weight" not in weights

    config.attention_bias = True
    LlamaForCausalLM(config).save_pretrained(tmp_path / "biased")
    with pytest.raises(SystemExit) as e:
        upcycle_main(["--model", str(tmp_path / "biased"), "--output_dir", str(tmp_path / "moe2")])
    assert e.value.code == 2 and "attention_bias is true" in capsys.readouterr().err
