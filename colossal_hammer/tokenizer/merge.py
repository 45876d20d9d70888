"""Merge a SentencePiece model trained on the user's corpus into a base model (HammerLLM's method).

    python -m colossal_hammer.tokenizer.merge --base_tokenizer_dir S --target_tokenizer_dir T \
        --corpus zh.jsonl[,more.txt] --donor_vocab_size 32000 [--donor_model trained.model]

1. Train a donor model on the corpus: BPE, byte fallback, split digits, and the 8105 characters of
   the 通用规范汉字表 as required characters (skipped when --donor_model is given).
2. Calibrate: donor and base scores live on different scales, so donor scores are multiplied by the
   mean ratio base/donor over the level-1 characters both models have as pieces.
3. Append every donor piece the base lacks with its calibrated score, in donor order; then any of the
   8105 characters still missing, below every other score. Coverage of all three levels is 100%.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Iterable, List, Optional

from ..data.reader import read_texts
from ..errors import InputError, main_with_errors
from .charset import all_chars, levels
from .extend import extend_proto
from .sentencepiece_io import NORMAL, load_proto, save_hf_tokenizer


def train_donor(texts: Iterable[str], vocab_size: int, required_chars: str):
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, required_chars=required_chars, character_coverage=0.9995,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2,
        max_sentence_length=16384, minloglevel=2,
    )
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


def calibration_ratio(base, donor, chars: Iterable[str]) -> float:
    """Mean of base_score / donor_score over `chars` that are NORMAL pieces in both models."""
    base_scores = {p.piece: p.score for p in base.pieces if p.type == NORMAL}
    donor_scores = {p.piece: p.score for p in donor.pieces if p.type == NORMAL}
    ratios = [base_scores[c] / donor_scores[c] for c in chars
              if c in base_scores and c in donor_scores and donor_scores[c] != 0]
    if not ratios:
        raise InputError("base and donor share no level-1 character: cannot calibrate scores")
    return statistics.fmean(ratios)


def merge_protos(base, donor, ratio: float, required: Iterable[str]) -> dict:
    """Append donor pieces (calibrated) and then missing required characters to `base`, in place."""
    present = {p.piece for p in base.pieces}
    added = 0
    for p in donor.pieces:
        if p.type == NORMAL and p.piece not in present:
            entry = base.pieces.add()
            entry.piece, entry.score, entry.type = p.piece, p.score * ratio, NORMAL
            present.add(p.piece)
            added += 1
    forced = extend_proto(base, [c for c in required if c not in present])
    return {"ratio": ratio, "donor_pieces_added": added, "required_chars_added": len(forced),
            "vocab_size": len(base.pieces)}


def merge_tokenizer(base_dir: str, target_dir: str, corpus: Optional[List[str]] = None,
                    donor_vocab_size: int = 20000, donor_model: Optional[str] = None) -> dict:
    base = load_proto(base_dir)
    if donor_model:
        donor = load_proto(donor_model)
    else:
        if not corpus:
            raise InputError("give --corpus to train a donor model, or --donor_model")
        donor = train_donor(corpus, donor_vocab_size, "".join(all_chars()))
    stats = merge_protos(base, donor, calibration_ratio(base, donor, levels()[1]), all_chars())
    save_hf_tokenizer(base, target_dir, template_dir=base_dir)
    return stats


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base_tokenizer_dir", required=True, help="HF folder with a SentencePiece tokenizer.model")
    p.add_argument("--target_tokenizer_dir", required=True)
    p.add_argument("--corpus", default=None, help="Comma-separated .txt (a text per line) or .jsonl ('text'/'target')")
    p.add_argument("--donor_vocab_size", type=int, default=20000, help="Must exceed 8105 + 259 (required chars, bytes)")
    p.add_argument("--donor_model", default=None, help="Use this trained SentencePiece model instead of training one")
    args = p.parse_args(argv)
    result = {}

    def body():
        corpus = [t for path in args.corpus.split(",") for t in read_texts(path)] if args.corpus else None
        result.update(merge_tokenizer(args.base_tokenizer_dir, args.target_tokenizer_dir, corpus,
                                      args.donor_vocab_size, args.donor_model))
        print(json.dumps(result))

    main_with_errors(body)
    return result


if __name__ == "__main__":
    main()
