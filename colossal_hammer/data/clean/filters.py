"""The quality rules (--filters), each datatrove's own filter with two calibrations (steps.ByScript).

Latin-script documents get datatrove's defaults, the thresholds of Gopher (Rae et al. 2021), C4 and
FineWeb. A Chinese document is measured in characters (words.py: a Han character is a word), so:
- gopher: no mean-word-length bounds (a Han "word" is one character: Gopher's 3-10 would drop every
  Chinese text); a minimum of 75 characters for Gopher's 50 words (about 1.5 characters per Chinese
  word); Chinese function words for Gopher's stop words; repetition n-grams 1.5 times as long in
  characters as Gopher's are in words.
- c4: no minimum of space-separated words per line and no maximum word length (a Chinese line has
  no spaces: it would be one "word" and fail both); a line may end in 。！？” as well as .?!" (C4
  drops every line without such an end, so every Chinese line), and sentences are counted at them.
- fineweb: a short line is one under 15 characters (30 for Latin text); a line ending in a closing
  quote after its 。 ends in punctuation.
CALIBRATION in tests/data/test_clean.py runs each rule over real Chinese news and English prose
(corpora.py) and checks what each drops.
"""

from __future__ import annotations

from typing import Callable, Dict, List

from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                        GopherRepetitionFilter)

from datatrove.utils.text import TERMINAL_PUNCTUATION

from .steps import ByScript, LengthFilter
from .words import WORDS

CHINESE_STOP_WORDS = ["的", "了", "是", "在", "和", "有", "不", "这", "我", "也", "就", "都"]
LATIN_REPETITION = dict(top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                        dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)))
CJK_REPETITION = dict(top_n_grams=((3, 0.2), (5, 0.18), (6, 0.16)),
                      dup_n_grams=((8, 0.15), (9, 0.14), (11, 0.13), (12, 0.12), (14, 0.11), (15, 0.10)))


def _gopher_repetition(writer):
    return ByScript("gopher_repetition", GopherRepetitionFilter(language=WORDS, **LATIN_REPETITION),
                    GopherRepetitionFilter(language=WORDS, **CJK_REPETITION), writer)


def _gopher_quality(writer):
    return ByScript("gopher_quality", GopherQualityFilter(language=WORDS),
                    GopherQualityFilter(language=WORDS, min_doc_words=75, max_doc_words=150_000,
                                        min_avg_word_length=None, max_avg_word_length=None,
                                        stop_words=CHINESE_STOP_WORDS), writer)


class _ChineseC4(C4QualityFilter):
    """C4's rules with Chinese sentence ends read as theirs: C4 keeps only lines ending in . ? ! " ' and
    would drop every line ending in 。"""

    ENDS = str.maketrans({"。": ".", "！": "!", "？": "?", "”": '"', "’": "'", "…": "..."})

    def filter(self, doc):
        doc.text = doc.text.translate(self.ENDS)  # ByScript puts the text back
        return super().filter(doc)


def _c4(writer):
    return ByScript("c4", C4QualityFilter(language=WORDS),
                    _ChineseC4(language=WORDS, min_words_per_line=-1, max_word_length=-1), writer)


def _fineweb(writer):
    # a Chinese sentence's closing quote comes after its 。 (。” ), so a line may end in one
    ends = tuple(TERMINAL_PUNCTUATION) + ("”", "’", "」", "』")
    return ByScript("fineweb", FineWebQualityFilter(language=WORDS),
                    FineWebQualityFilter(language=WORDS, short_line_length=15, stop_chars=ends), writer)


# (--filters name, the stages it adds: report name and builder); gopher is two stages, as in Gopher
FILTERS: Dict[str, List[tuple]] = {
    "length": [("length", None)],
    "gopher": [("gopher_repetition", _gopher_repetition), ("gopher_quality", _gopher_quality)],
    "c4": [("c4", _c4)],
    "fineweb": [("fineweb", _fineweb)],
}


def build(stage: str, builder: Callable, writer, min_chars: int, max_chars: int):
    if stage == "length":
        return LengthFilter(min_chars, max_chars, writer)
    return builder(writer)
