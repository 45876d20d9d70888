"""Which files make up an HF tokenizer folder, and copying them beside a model."""

import os
import shutil
from typing import List

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")
CONFIG_FILES = TOKENIZER_FILES[2:]  # the settings, without the vocabulary itself


def copy_tokenizer_files(source_dir: str, target_dir: str, names=TOKENIZER_FILES) -> List[str]:
    copied = [n for n in names if os.path.isfile(os.path.join(source_dir, n))]
    for name in copied:
        shutil.copy(os.path.join(source_dir, name), os.path.join(target_dir, name))
    return copied
