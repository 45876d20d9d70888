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

from ..errors import InputError, check_output, check_positive, command_name, require_file, run_cli
from .charset import all_chars, levels
from .extend import extend_proto, reach_summary, summary_line
from .files import read_text_file
from .sentencepiece_io import NORMAL, load_proto, save_hf_tokenizer

# The donor must hold the 8105 required characters, 256 byte pieces and <unk> <s> </s>.
MIN_DONOR_VOCAB = 8105 + 256 + 3


def train_donor(texts: Iterable[str], vocab_size: int, required_chars: str):
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    buffer = io.BytesIO()
    try:
        _train(spm, buffer, texts, vocab_size, required_chars)
    except RuntimeError as e:  # sentencepiece's own checks (vocabulary too small for the corpus...)
        detail = str(e).strip().splitlines()[0].split("] ", 1)[-1]
        raise InputError(f"--donor_vocab_size {vocab_size}: sentencepiece refuses: {detail}") from None
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    return proto


def _train(spm, buffer, texts, vocab_size, required_chars) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, required_chars=required_chars, character_coverage=0.9995,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2,
        max_sentence_length=16384, minloglevel=2,
    )


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
    added = []
    for p in donor.pieces:
        if p.type == NORMAL and p.piece not in present:
            entry = base.pieces.add()
            entry.piece, entry.score, entry.type = p.piece, p.score * ratio, NORMAL
            present.add(p.piece)
            added.append(p.piece)
    forced = extend_proto(base, [c for c in required if c not in present])
    return {"ratio": ratio, "donor_pieces_added": len(added), "required_chars_added": len(forced),
            "vocab_size": len(base.pieces), "pieces": added + forced}


def merge_tokenizer(base_dir: str, target_dir: str, corpus: Optional[List[str]] = None,
                    donor_vocab_size: int = 20000, donor_model: Optional[str] = None) -> dict:
    base = load_proto(base_dir, "--base_tokenizer_dir")
    check_output(target_dir, "--target_tokenizer_dir", [base_dir, donor_model])
    if donor_model:
        donor = load_proto(donor_model, "--donor_model")
    else:
        if not corpus:
            raise InputError("--corpus: give a corpus to train a donor model on, or --donor_model")
        if donor_vocab_size < MIN_DONOR_VOCAB:
            raise InputError(f"--donor_vocab_size {donor_vocab_size}: must be at least {MIN_DONOR_VOCAB} "
                             f"(8105 required characters + 256 bytes + 3 special pieces)")
        donor = train_donor(corpus, donor_vocab_size, "".join(all_chars()))
    stats = merge_protos(base, donor, calibration_ratio(base, donor, levels()[1]), all_chars())
    pieces = stats.pop("pieces")
    tokenizer = save_hf_tokenizer(base, target_dir, template_dir=base_dir)
    return {**stats, "added": len(pieces), **reach_summary(tokenizer, pieces)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base_tokenizer_dir", required=True, help="HF folder with a SentencePiece tokenizer.model")
    p.add_argument("--target_tokenizer_dir", required=True)
    p.add_argument("--corpus", default=None, help="Comma-separated .txt (a text per line) or .jsonl ('text'/'target')")
    p.add_argument("--donor_vocab_size", type=int, default=20000, help="Must exceed 8105 + 259 (required chars, bytes)")
    p.add_argument("--donor_model", default=None, help="Use this trained SentencePiece model instead of training one")
    args = p.parse_args(argv)

    def body():
        paths = [c for c in args.corpus.split(",") if c] if args.corpus else []
        for path in paths:
            require_file(path, "--corpus", ".jsonl or .txt file")
        if args.donor_model:
            require_file(args.donor_model, "--donor_model", "SentencePiece .model file")
        check_positive(args.donor_vocab_size, "--donor_vocab_size")
        check_output(args.target_tokenizer_dir, "--target_tokenizer_dir", [args.base_tokenizer_dir, *paths])
        load_proto(args.base_tokenizer_dir, "--base_tokenizer_dir")  # before reading a large corpus
        corpus = [t for path in paths for t in read_text_file(path, "--corpus")] if paths else None
        result = merge_tokenizer(args.base_tokenizer_dir, args.target_tokenizer_dir, corpus,
                                 args.donor_vocab_size, args.donor_model)
        print(summary_line(result))
        print(json.dumps(result, ensure_ascii=False))
        return result

    return run_cli(body)


if __name__ == "__main__":
    main()
