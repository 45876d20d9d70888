"""A LoRA adapter merges into the served model; stop strings never show, even split across tokens."""

import pytest
import torch

from colossal_hammer.errors import InputError
from colossal_hammer.serve import loading
from colossal_hammer.serve.prompts import StopDecoder


def test_adapter_is_merged(served_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(served_model)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        model, _ = loading.load(served_model, adapter=str(tmp_path / "adapter"))
        plain, _ = loading.load(served_model)
        assert torch.allclose(model(input_ids=ids).logits, expected, atol=1e-5)
        assert not torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-3)  # the adapter matters
    with pytest.raises(InputError, match="--adapter"):
        loading.load(served_model, adapter=str(tmp_path))


class CharTokenizer:
    """One character per id: enough to split a stop string over several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def run(text, stop):
    decoder, out = StopDecoder(CharTokenizer(), stop), []
    for ch in text:
        piece, stopped = decoder.push(ord(ch))
        out.append(piece)
        if stopped:
            return "".join(out), True
    return "".join(out) + decoder.flush(), False


@pytest.mark.parametrize("text, stop, expected", [
    ("hello END world", ["END"], ("hello ", True)),
    ("hello EN", ["END"], ("hello EN", False)),  # a partial stop at the end is text after all
    ("abcXYd", ["XYZ", "Yd"], ("abcX", True)),
    ("plain", [], ("plain", False)),
])
def test_stop_strings(text, stop, expected):
    assert run(text, stop) == expected


def test_held_back_text_is_not_shown_early():
    decoder = StopDecoder(CharTokenizer(), ["END"])
    assert [decoder.push(ord(c))[0] for c in "aEN"] == ["a", "", ""]
    assert decoder.push(ord("x")) == ("ENx", False)


def test_sampling_filters():
    from colossal_hammer.serve.engine import SamplingParams, sample

    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(1, temperature=0), g) == 1
    assert {sample(logits, SamplingParams(1, temperature=1.0, top_k=1), g) for _ in range(50)} == {1}
    assert {sample(logits, SamplingParams(1, temperature=1.0, top_p=0.3), g) for _ in range(50)} == {1}
    both = {sample(logits, SamplingParams(1, temperature=1.0, top_p=0.9), g) for _ in range(200)}
    assert both == {1, 2}  # the two near-equal tokens hold ~93% of the mass; the tail is cut
