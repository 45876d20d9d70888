"""Config JSONs of the other families, and the RoPE fields each scaling writes."""

import json

import pytest
from transformers import AutoModelForCausalLM

from colossal_hammer.errors import InputError
from colossal_hammer.model import rope
from colossal_hammer.model.build import load_config


@pytest.mark.parametrize("model_type, cls", [("qwen2", "Qwen2ForCausalLM"), ("qwen3", "Qwen3ForCausalLM"),
                                             ("mistral", "MistralForCausalLM"), ("llama", "LlamaForCausalLM")])
def test_a_config_json_builds_its_family(model_type, cls, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_type": model_type, "hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                "vocab_size": 128}))
    assert type(AutoModelForCausalLM.from_config(load_config(str(path)))).__name__ == cls


def test_another_model_type_is_refused_naming_the_families(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="model_type 'gpt2'; give one of 'llama', 'qwen2', 'qwen3', 'mistral' or"):
        load_config(str(path))


def test_each_scaling_writes_what_transformers_reads():
    config = load_config("tiny")  # context 2048
    assert rope.overrides(config, None, None, None) == {}
    assert rope.overrides(config, 1e6, "linear", 2) == {"rope_theta": 1e6,
                                                        "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert rope.overrides(config, None, "dynamic", 2) == {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    llama3 = rope.overrides(config, None, "llama3", 4)
    assert llama3 == {"max_position_embeddings": 8192, "rope_scaling": {
        "rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 2048, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0}}
    model = AutoModelForCausalLM.from_config(rope.apply(config, None, "llama3", 4))
    assert model.model.rotary_emb.rope_type == "llama3"
