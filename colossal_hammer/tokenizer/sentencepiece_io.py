"""Read and write SentencePiece model protos, and save them as HF tokenizer folders (slow and fast)."""

from __future__ import annotations

import os
from typing import Optional

from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from ..errors import InputError
from .files import CONFIG_FILES, copy_tokenizer_files

NORMAL = sp_pb2.ModelProto.SentencePiece.NORMAL


def find_model_file(path: str) -> Optional[str]:
    """`path` itself if it is a .model file, else `path/tokenizer.model` if present."""
    if os.path.isfile(path):
        return path
    candidate = os.path.join(path, "tokenizer.model")
    return candidate if os.path.isfile(candidate) else None


def load_proto(path: str, flag: str = "") -> sp_pb2.ModelProto:
    """The ModelProto of a .model file or of a folder's tokenizer.model; InputError (naming `flag`)
    when there is none or it does not parse."""
    where = f"{flag} {path}" if flag else path
    if not os.path.exists(path):
        raise InputError(f"{where}: no such file or folder")
    model_file = find_model_file(path)
    if model_file is None:
        raise InputError(f"{where}: no SentencePiece tokenizer.model in this folder; give an HF folder of a "
                         f"SentencePiece tokenizer (Llama-2 style) or a .model file")
    proto = sp_pb2.ModelProto()
    with open(model_file, "rb") as f:
        data = f.read()
    try:
        proto.ParseFromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: whatever the damage, the file is unusable
        proto = None
    if proto is None or not proto.pieces:
        inner = "" if model_file == path else f"{os.path.basename(model_file)} "
        raise InputError(f"{where}: {inner}not a SentencePiece model (does not parse)")
    return proto


def save_hf_tokenizer(proto: sp_pb2.ModelProto, out_dir: str, template_dir: Optional[str] = None):
    """Write tokenizer.model and let transformers write the rest, so that
    `AutoTokenizer.from_pretrained(out_dir)` loads both slow and fast. Settings (special tokens, chat
    template, add_bos/eos) come from `template_dir`'s config when given. Returns the fast tokenizer."""
    from transformers import AutoTokenizer, LlamaTokenizer

    os.makedirs(out_dir, exist_ok=True)
    if template_dir and os.path.isdir(template_dir) and os.path.abspath(template_dir) != os.path.abspath(out_dir):
        copy_tokenizer_files(template_dir, out_dir, CONFIG_FILES)
    stale = os.path.join(out_dir, "tokenizer.json")
    if os.path.exists(stale):
        os.remove(stale)  # rebuilt below from the new model
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(proto.SerializeToString())
    if os.path.isfile(os.path.join(out_dir, "tokenizer_config.json")):
        slow = AutoTokenizer.from_pretrained(out_dir, use_fast=False)
    else:
        slow = LlamaTokenizer(vocab_file=os.path.join(out_dir, "tokenizer.model"), legacy=False)
    slow.save_pretrained(out_dir)
    fast = AutoTokenizer.from_pretrained(out_dir, use_fast=True, from_slow=True)
    fast.save_pretrained(out_dir)
    return fast
