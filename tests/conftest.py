import json

import pytest

from colossal_hammer.data import corpora
from colossal_hammer.demo import base_tokenizer


def held_out_chinese():
    return [s for sentences in corpora.chinese_news().values() for s in sentences[-50:]]


def chinese_training_text():
    return [s for sentences in corpora.chinese_news().values() for s in sentences[:-50]] + corpora.chinese_reviews()[:3000]


@pytest.fixture(scope="session")
def english_base(tmp_path_factory):
    """An English-centric base like Llama-2's: English text plus a sprinkle of Chinese (150 sentences),
    so that it knows a few hundred common characters, as Llama-2 does (605 of level 1), and calibration
    has characters to compare."""
    out = tmp_path_factory.mktemp("base")
    sprinkle = [s for sentences in corpora.chinese_news().values() for s in sentences[:15]]
    base_tokenizer.build_base_tokenizer(corpora.english_paragraphs() + sprinkle, str(out), vocab_size=2000)
    return str(out)


# Repeated so that BPE learns a piece spanning "人工|智能": the boundary case must be able to go wrong.
BOUNDARY_PHRASE = "问：什么是人工智能技术"


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A Llama-style SentencePiece tokenizer trained on English and Chinese text that packages ship."""
    out = tmp_path_factory.mktemp("tokenizer")
    news = [s for sentences in corpora.chinese_news().values() for s in sentences[:200]]
    base_tokenizer.build_base_tokenizer(corpora.english_paragraphs() + news + [BOUNDARY_PHRASE] * 2000, str(out),
                                        vocab_size=3000)
    return str(out)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def save_tiny_llama(tokenizer_dir, out, hidden=32, layers=1, seed=0, vocab_size=None):
    """A tiny random Llama sized to the tokenizer (or to `vocab_size`), saved with it (as init_embeddings
    leaves a model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4 if hidden >= 64 else 2,
                         num_key_value_heads=2 if hidden >= 64 else 1)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
