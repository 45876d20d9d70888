"""The folder a LoRA run saves in modeling/: peft's adapter files, plus a record of the base they belong to.

Here, below both the training code that writes it (adapters/lora.py) and the export that reads it
(model/adapter_export.py)."""

from __future__ import annotations

import json
import os
from typing import Optional

from ..digest import weights_sha256

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "base_model.json"  # the base's path and the SHA-256 of its weights, checked at resume and merge


def is_adapter_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG))


def base_record(base_dir: str) -> dict:
    return {"path": os.path.abspath(base_dir), "weights_sha256": weights_sha256(base_dir)}


def recorded_base(adapter_dir: str) -> Optional[dict]:
    """What training recorded of the base (None for an adapter folder from before the record)."""
    path = os.path.join(adapter_dir, BASE_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
