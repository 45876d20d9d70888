"""token_bytes: the bytes a prepared dataset's tokens stand for add up to the bytes of the text they encode."""

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from colossal_hammer.data import corpora
from colossal_hammer.eval.token_bytes import byte_lengths

# Chinese with characters outside the small vocabulary (byte-fallback pieces), digits, English, a newline.
TEXTS = ["我们研究人工智能技术。", "鬱龘齉 2024年的比赛", "The quick brown fox jumps.", "line one\nline two  end"]


def test_sentencepiece_pieces_count_their_text_bytes(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    table = byte_lengths(tok, size=len(tok) + 5)
    assert len(table) == len(tok) + 5 and not table[len(tok):].any()
    assert all(table[i] == 0 for i in tok.all_special_ids)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert any(tok.convert_ids_to_tokens(i).startswith("<0x") for i in ids) or text != TEXTS[1]
        # the word-start '▁' SentencePiece puts before a text is the one byte the text does not have
        assert sum(table[i] for i in ids) == len(text.encode("utf-8")) + 1, text


def test_byte_level_pieces_count_their_text_bytes():
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpora.english_paragraphs()[:200], vocab_size=400, special_tokens=["<|end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|end|>")
    table = byte_lengths(tok)
    assert table[tok.eos_token_id] == 0
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False).input_ids
        assert sum(table[i] for i in ids) == len(text.encode("utf-8")), text
