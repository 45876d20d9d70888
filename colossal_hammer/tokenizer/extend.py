"""Extend a tokenizer with new pieces (SentencePiece, Llama-2 style) or tokens (BPE, Llama-3 style).

    python -m colossal_hammer.tokenizer.extend --source_tokenizer_dir S --target_tokenizer_dir T \
        --expand_tokens_file new.jsonl          # rows {"piece": "..."}

SentencePiece: pieces are appended to the model proto in file order, duplicates and pieces already in
the vocabulary skipped (one pass with a set). In a SentencePiece BPE model a piece's score is its
merge priority; appending with score 0 (as the reference does) would put new pieces ahead of every
base merge and change how existing text is cut. New pieces therefore score below the lowest base
score, keeping their file order, unless `--new_piece_score` asks otherwise. A new piece longer than
one character is only produced if the model can reach it by merging pieces it has (BPE has no merge
into "人工智能" unless it has two pieces that make it): after extension every added piece is encoded,
and the summary counts it as reachable only if encoding its text yields it, so `added` never claims
pieces that training will never see.

BPE / fast tokenizers without a SentencePiece model get the pieces as added tokens.
"""

from __future__ import annotations

import argparse
import json
from typing import Iterable, List, Optional

from ..errors import InputError, check_finite, check_output, command_name, require_tokenizer, run_cli
from .files import read_text_file
from .sentencepiece_io import NORMAL, find_model_file, load_proto, save_hf_tokenizer

EXAMPLES = 10  # unreachable pieces named in the summary


def read_pieces(path: str) -> List[str]:
    if not path.endswith(".jsonl"):
        raise InputError(f'--expand_tokens_file {path}: expected a .jsonl file of {{"piece": "..."}} rows')
    return read_text_file(path, "--expand_tokens_file", fields=("piece",))


def unreachable(tokenizer, pieces: List[str]) -> List[str]:
    """The pieces encoding never produces: encoding a piece's own text does not yield its id.

    The text is what the piece decodes to, so "▁人工" is tried as a word start, "人工" inside a word."""
    if not pieces:
        return []
    ids = tokenizer.convert_tokens_to_ids(pieces)
    texts = [tokenizer.convert_tokens_to_string([p]) for p in pieces]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [p for p, i, got in zip(pieces, ids, encoded) if i not in got]


def reach_summary(tokenizer, added: List[str]) -> dict:
    missed = unreachable(tokenizer, added)
    return {"reachable": len(added) - len(missed), "unreachable": len(missed),
            "unreachable_examples": missed[:EXAMPLES]}


def summary_line(result: dict) -> str:
    line = f"added: {result['added']}, reachable: {result['reachable']}, unreachable: {result['unreachable']}"
    if result["unreachable"]:
        line += (f" (examples {' '.join(result['unreachable_examples'])}: no merge path reaches them; "
                 f"add their parts as pieces too)")
    return line


def new_unique(pieces: Iterable[str], existing: Iterable[str]) -> List[str]:
    """Pieces not in `existing`, first occurrence kept, order kept: O(n)."""
    seen = set(existing)
    out = []
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            out.append(piece)
    return out


def extend_proto(proto, pieces: Iterable[str], score: Optional[float] = None) -> List[str]:
    """Append pieces to a SentencePiece ModelProto in place; returns those actually added."""
    added = new_unique(pieces, (p.piece for p in proto.pieces))
    floor = min(p.score for p in proto.pieces if p.type == NORMAL) if score is None else None
    for i, piece in enumerate(added):
        entry = proto.pieces.add()
        entry.piece = piece
        entry.score = score if score is not None else floor - 1.0 - i
        entry.type = NORMAL
    return added


def extend_tokenizer(source_dir: str, target_dir: str, pieces: List[str], score: Optional[float] = None) -> dict:
    require_tokenizer(source_dir, "--source_tokenizer_dir")
    check_finite(score, "--new_piece_score")
    check_output(target_dir, "--target_tokenizer_dir", [source_dir])
    if find_model_file(source_dir):
        proto = load_proto(source_dir, "--source_tokenizer_dir")
        before = len(proto.pieces)
        added = extend_proto(proto, pieces, score)
        tokenizer = save_hf_tokenizer(proto, target_dir, template_dir=source_dir)
        kind = "sentencepiece"
    else:
        from ..data.tokenize import load_tokenizer

        tokenizer = load_tokenizer(source_dir)
        before = len(tokenizer)
        added = new_unique(pieces, tokenizer.get_vocab())
        tokenizer.add_tokens(added)
        tokenizer.save_pretrained(target_dir)
        kind = "added_tokens"
    return {"kind": kind, "vocab_before": before, "vocab_after": len(tokenizer), "requested": len(pieces),
            "added": len(added), "skipped": len(pieces) - len(added), **reach_summary(tokenizer, added)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source_tokenizer_dir", required=True)
    p.add_argument("--target_tokenizer_dir", required=True)
    p.add_argument("--expand_tokens_file", required=True, help='jsonl with rows {"piece": "..."}')
    p.add_argument("--new_piece_score", type=float, default=None,
                   help="Score of every new SentencePiece piece (default: below the lowest base score, in file order)")
    args = p.parse_args(argv)

    def body():
        pieces = read_pieces(args.expand_tokens_file)
        result = extend_tokenizer(args.source_tokenizer_dir, args.target_tokenizer_dir, pieces, args.new_piece_score)
        print(summary_line(result))
        print(json.dumps(result, ensure_ascii=False))
        return result

    return run_cli(body)


if __name__ == "__main__":
    main()
