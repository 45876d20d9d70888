"""Words and sentences without downloaded models, for Chinese and English alike.

datatrove's own word tokenizers need NLTK's punkt data (English) or spaCy with a segmenter (Chinese), which
would be fetched at run time. Here a Han, Hiragana or Katakana character is a word by itself (a Chinese
text has no spaces, so a rule that counts space-separated words would see a paragraph as one word and drop
it); a run of letters, digits and underscores is a word ("it's", "user-defined" and "3.14" included); and a
run of other visible characters is a token of its own (as NLTK splits punctuation off: `",`, `...` and `);`
are one token each). Sentences end at terminal punctuation or a line break.
"""

from __future__ import annotations

import regex
from datatrove.utils.word_tokenizers import WordTokenizer

CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
_LATIN = rf"(?:(?![{CJK}])[\p{{L}}\p{{N}}\p{{M}}_])+"
_WORDS = regex.compile(rf"[{CJK}]|{_LATIN}(?:['’.\-]{_LATIN})*|(?:(?![{CJK}])[^\s\p{{L}}\p{{N}}\p{{M}}_])+")
_SENTENCE_END = regex.compile(r"(?<=[。！？!?.…])\s*|\n+")
_CJK_CHAR = regex.compile(rf"[{CJK}]")
_LETTER = regex.compile(r"\p{L}")


class ScriptWords(WordTokenizer):
    def __init__(self):
        super().__init__("any")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for sentence in self.sent_tokenize(text):
            start = text.index(sentence, start)
            spans.append((start, start + len(sentence)))
            start += len(sentence)
        return spans

    def __hash__(self):  # one tokenizer: datatrove caches load_word_tokenizer(language) by it
        return hash(type(self))

    def __eq__(self, other):
        return type(other) is type(self)


WORDS = ScriptWords()


def is_cjk(text: str, share: float = 0.3) -> bool:
    """Whether at least `share` of the text's letters are Han or kana: such a text is calibrated as Chinese."""
    letters = len(_LETTER.findall(text))
    return letters > 0 and len(_CJK_CHAR.findall(text)) >= share * letters
