"""How well tokenizers cover Chinese and compress text.

    python -m colossal_hammer.tokenizer.analyze TOKENIZER [TOKENIZER ...] [--reference TOKENIZER]
        [--text_file held_out.jsonl|.txt] [--output report.json]

A TOKENIZER is an HF folder or a SentencePiece .model file. For each it reports:
- coverage of the 通用规范汉字表 levels 1/2/3 (3500/3000/1605 characters): a character counts when it
  encodes to exactly one token that is not the unknown token, after dropping a leading bare "▁";
- bytes per token over a text set (UTF-8 bytes / tokens: higher is better compression);
- compression against the reference tokenizer (tokens / reference tokens: below 1 is better).
The default text set is held-out THUCNews sentences (Chinese) and Python's pydoc topics (English).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from ..data.tokenize import load_tokenizer
from ..errors import InputError, check_output_file, command_name, require_tokenizer, run_cli, write_json
from .charset import levels
from .files import read_text_file
from .sentencepiece_io import load_proto


class AnyTokenizer:
    """One interface over a SentencePiece .model and an HF tokenizer folder: ids without special tokens."""

    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(os.path.normpath(path)).removesuffix(".model")
        if os.path.isfile(path):
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_file=path)
            self.hf = None
            self.unk_id = self.sp.unk_id()
            self.vocab_size = self.sp.get_piece_size()
        else:
            self.hf = load_tokenizer(path)
            self.sp = None
            self.unk_id = self.hf.unk_token_id
            self.vocab_size = len(self.hf)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        if self.sp is not None:
            return self.sp.encode(list(texts))
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id) if self.sp is not None else self.hf.convert_ids_to_tokens(token_id)


def check_tokenizer_path(path: str, flag: str) -> str:
    """A SentencePiece .model file that parses, or an HF tokenizer folder."""
    if os.path.isfile(path):
        load_proto(path, flag)
    else:
        require_tokenizer(path, flag)
    return path


def coverage(tok: AnyTokenizer, chars: Sequence[str]) -> float:
    covered = 0
    for ids in tok.encode(chars):
        if ids and tok.piece(ids[0]) == "▁":
            ids = ids[1:]
        covered += len(ids) == 1 and ids[0] != tok.unk_id
    return covered / len(chars)


def default_texts() -> Dict[str, List[str]]:
    from ..data.corpora import chinese_news, english_paragraphs

    # The last 50 sentences of each news category: what the demo and merge hold out from training.
    chinese = [s for sentences in chinese_news().values() for s in sentences[-50:]]
    return {"chinese": chinese, "english": english_paragraphs()[-300:]}


@dataclass
class Report:
    tokenizer: str
    vocab_size: int
    coverage: Dict[str, float]  # level -> percent
    bytes_per_token: Dict[str, float]  # text set -> bytes/token
    tokens: Dict[str, int]
    compression: Dict[str, Optional[float]]  # text set -> tokens / reference tokens


def analyze(paths: Sequence[str], reference: Optional[str] = None,
            texts: Optional[Dict[str, List[str]]] = None) -> List[Report]:
    texts = texts or default_texts()
    tokenizers = [AnyTokenizer(p) for p in paths]
    ref = AnyTokenizer(reference) if reference else tokenizers[0]
    ref_tokens = {name: sum(map(len, ref.encode(t))) for name, t in texts.items()}
    reports = []
    for tok in tokenizers:
        tokens = {name: sum(map(len, tok.encode(t))) for name, t in texts.items()}
        reports.append(Report(
            tokenizer=tok.name,
            vocab_size=tok.vocab_size,
            coverage={f"level{level}": round(100 * coverage(tok, chars), 2) for level, chars in levels().items()},
            bytes_per_token={name: round(sum(len(s.encode()) for s in t) / max(1, tokens[name]), 3)
                             for name, t in texts.items()},
            tokens=tokens,
            compression={name: round(tokens[name] / ref_tokens[name], 4) if ref_tokens[name] else None
                         for name in texts},
        ))
    return reports


def table(reports: List[Report], reference: str) -> str:
    sets = list(reports[0].bytes_per_token)
    head = ["tokenizer", "vocab", "L1 %", "L2 %", "L3 %"] + [f"B/tok {s}" for s in sets] + \
        [f"vs {reference} {s}" for s in sets]
    rows = [[r.tokenizer, f"{r.vocab_size:,}", *(f"{v:.2f}" for v in r.coverage.values()),
             *(f"{r.bytes_per_token[s]:.3f}" for s in sets),
             *(f"{r.compression[s]:.3f}" if r.compression[s] is not None else "-" for s in sets)] for r in reports]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("tokenizers", nargs="+", help="HF tokenizer folders or SentencePiece .model files")
    p.add_argument("--reference", default=None, help="Tokenizer to compare token counts with (default: the first)")
    p.add_argument("--text_file", default=None, help=".txt (a text per line) or .jsonl ('text' or 'target' field)")
    p.add_argument("--output", default=None, help="Write the report as JSON here")
    args = p.parse_args(argv)

    def body() -> List[dict]:
        for path in args.tokenizers:
            check_tokenizer_path(path, "TOKENIZER")
        if args.reference:
            check_tokenizer_path(args.reference, "--reference")
        check_output_file(args.output, "--output")
        texts = {os.path.basename(args.text_file): read_text_file(args.text_file, "--text_file")} \
            if args.text_file else None
        if texts is not None and not any(texts.values()):
            raise InputError(f"--text_file {args.text_file}: no text in it")
        reports = analyze(args.tokenizers, args.reference, texts)
        reference_name = AnyTokenizer(args.reference).name if args.reference else reports[0].tokenizer
        print(table(reports, reference_name))
        out = [asdict(r) for r in reports]
        if args.output:
            write_json(args.output, out)
        return out

    return run_cli(body)


if __name__ == "__main__":
    main()
