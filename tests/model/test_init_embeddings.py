"""init_embeddings: old logits unchanged, new rows = mean of sub-token rows (no "▁"), dtype kept."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from colossal_hammer.data import corpora
from colossal_hammer.model.init_embeddings import BYTE_PIECE, main as init_main
from colossal_hammer.tokenizer.extend import main as extend_main

NEW_PIECES = ["人工", "智能", "人工智能", "研究", "鬯", "数据"]


def make_source(tokenizer_dir, out, dtype, tied):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model


@pytest.fixture(scope="module")
def extended_tokenizer(english_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("ext")
    pieces = out / "new.jsonl"
    pieces.write_text("\n".join(json.dumps({"piece": p}, ensure_ascii=False) for p in NEW_PIECES))
    extend_main(["--source_tokenizer_dir", english_base, "--target_tokenizer_dir", str(out / "tok"),
                 "--expand_tokens_file", str(pieces)])
    return str(out / "tok")


@pytest.mark.parametrize("dtype, tied", [(torch.float32, False), (torch.bfloat16, True)])
def test_init_embeddings(english_base, extended_tokenizer, tmp_path, dtype, tied):
    source = make_source(english_base, tmp_path / "src", dtype, tied)
    result = init_main(["--source_model_and_tokenizer_path", str(tmp_path / "src"), "--target_tokenizer_path",
                        extended_tokenizer, "--target_model_path", str(tmp_path / "dst")])
    target = AutoModelForCausalLM.from_pretrained(tmp_path / "dst", torch_dtype="auto")
    old_tok = AutoTokenizer.from_pretrained(english_base)
    new_tok = AutoTokenizer.from_pretrained(tmp_path / "dst")  # the tokenizer was saved beside the model
    old_size = len(old_tok)
    assert len(new_tok) == target.get_input_embeddings().weight.shape[0] == result["new_vocab"] > old_size
    assert target.dtype == dtype and result["dtype"] == str(dtype).replace("torch.", "")
    assert target.config.tie_word_embeddings == tied

    # logits over old tokens on old-token text are unchanged
    ids = old_tok(corpora.english_paragraphs()[0], return_tensors="pt").input_ids[:, :64]
    with torch.no_grad():
        before = source(ids).logits
        after = target(ids).logits
    if dtype == torch.float32:
        assert torch.equal(before, after[..., :old_size])
    else:  # a bf16 GEMM with more output columns may block its sums differently: bf16 rounding only
        torch.testing.assert_close(after[..., :old_size], before, rtol=1.6e-2, atol=1e-2)

    # a new token's row is the mean of its old sub-token rows, without "▁" (and byte pieces)
    vocab = old_tok.get_vocab()
    old_emb = source.get_input_embeddings().weight.float()
    new_emb = target.get_input_embeddings().weight.float()
    checked = 0
    for piece in NEW_PIECES:
        new_id = new_tok.convert_tokens_to_ids(piece)
        if new_id < old_size:
            continue  # the base already had it
        sub = [i for i in old_tok(piece, add_special_tokens=False).input_ids
               if old_tok.convert_ids_to_tokens(i) != "▁" and not BYTE_PIECE.match(old_tok.convert_ids_to_tokens(i))]
        expected = old_emb[sub].mean(0) if sub else old_emb.mean(0)
        assert vocab.get("▁") is None or vocab["▁"] not in sub
        torch.testing.assert_close(new_emb[new_id], expected.to(dtype).float(), rtol=1e-6, atol=1e-7)
        checked += bool(sub)
    assert checked >= 2
    if not tied:
        old_head = source.get_output_embeddings().weight.float()
        new_head = target.get_output_embeddings().weight.float()
        assert torch.equal(new_head[:old_size], old_head)


def test_tokenizer_that_does_not_extend_is_refused(english_base, tmp_path, capsys):
    from colossal_hammer.demo import base_tokenizer

    make_source(english_base, tmp_path / "src", torch.float32, False)
    base_tokenizer.build_base_tokenizer(corpora.english_paragraphs()[::2], str(tmp_path / "other"), vocab_size=2100)
    with pytest.raises(SystemExit) as e:
        init_main(["--source_model_and_tokenizer_path", str(tmp_path / "src"), "--target_tokenizer_path",
                   str(tmp_path / "other"), "--target_model_path", str(tmp_path / "dst")])
    assert e.value.code == 2
    assert "does not extend the source" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_target_without_new_tokens_leaves_the_model_as_it_was(english_base, tmp_path):
    """The same tokenizer as target used to crash (IndexError on an empty batch): nothing to add is fine."""
    source = make_source(english_base, tmp_path / "src", torch.float32, False)
    result = init_main(["--source_model_and_tokenizer_path", str(tmp_path / "src"), "--target_tokenizer_path",
                        english_base, "--target_model_path", str(tmp_path / "dst")])
    assert result["old_vocab"] == result["new_vocab"] and result["rows_from_mean_of_all"] == 0
    copy = AutoModelForCausalLM.from_pretrained(tmp_path / "dst")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), copy.state_dict().values()))
