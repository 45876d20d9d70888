"""Which HF folder a path means: a checkpoint's step-N (its modeling/) or an HF folder itself.

Decided by what is on disk, never by a substring of the path. One function for export and for
train.py's `--load_weights_only`.
"""

from __future__ import annotations

import os

from ..errors import InputError
from .adapter_folder import is_adapter_folder


def hf_folder_of(path: str, flag: str = "--checkpoint") -> str:
    """The HF folder (config.json + weights) for a checkpoint step-N folder, its modeling/, or an HF
    folder; InputError naming `flag` otherwise."""
    if os.path.isfile(path):
        raise InputError(f"{flag} {path}: is a file; give a checkpoint step-N folder or an HF model folder")
    if not os.path.isdir(path):
        raise InputError(f"{flag} {path}: no such folder; give a checkpoint step-N folder or an HF model folder")
    modeling = os.path.join(path, "modeling")
    folder = modeling if os.path.isdir(modeling) else path
    if is_adapter_folder(folder):
        raise InputError(f"{flag} {path}: holds LoRA adapters, not whole weights; merge them into their base first: "
                         f"python -m colossal_hammer.model.export --checkpoint {path} --output_dir DIR --merge_lora")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(f"{flag} {path}: neither a checkpoint (step-N/modeling/config.json) nor an HF model "
                         f"folder (config.json); give a save_dir's step-N folder")
    return folder
