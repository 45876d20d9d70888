"""Which files make up an HF tokenizer folder, and copying them beside a model."""

import os
import shutil
from typing import List, Sequence

from ..errors import InputError, require_file

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
CONFIG_FILES = TOKENIZER_FILES[2:]  # the settings, without the vocabulary itself


def copy_tokenizer_files(source_dir: str, target_dir: str, names=TOKENIZER_FILES) -> List[str]:
    copied = [n for n in names if os.path.isfile(os.path.join(source_dir, n))]
    for name in copied:
        shutil.copy(os.path.join(source_dir, name), os.path.join(target_dir, name))
    return copied


def read_text_file(path: str, flag: str, fields: Sequence[str] = ("text", "target")) -> List[str]:
    """data.reader.read_texts with the tools' checks: the file exists, and is UTF-8."""
    from ..data.reader import read_texts

    require_file(path, flag, ".jsonl or .txt file")
    try:
        return read_texts(path, fields=fields)
    except UnicodeDecodeError as e:
        raise InputError(f"{flag} {path}: not UTF-8 text (byte {e.start}); convert the file to UTF-8") from None
