"""Export a LoRA checkpoint: peft's adapter folder as it is, or merged into its base as a whole HF model.

The adapter folder is what `peft.PeftModel.from_pretrained(base, DIR)` loads (and transformers too, from
the absolute base path in adapter_config.json). Merging loads the base in fp32, adds (alpha / r) * B @ A
into each targeted weight, replaces modules_to_save by their trained copies, then casts to the base's dtype
(or --dtype): one full model in memory, unlike the streaming export of whole-weight checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from ..digest import weights_sha256
from ..errors import InputError, check_output
from ..tokenizer.files import copy_tokenizer_files
from .adapter_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD, recorded_base


def adapter_folder(checkpoint: str) -> Optional[str]:
    """The adapter folder of a LoRA step-N checkpoint (or the folder itself), else None."""
    for folder in (os.path.join(checkpoint, "modeling"), checkpoint):
        if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG)):
            return folder
    return None


def base_of(adapter_dir: str, base_dir: Optional[str]) -> str:
    """The base to merge into: --base_model or the one the adapters name, holding the very weights they were
    trained on (the SHA-256 that training recorded in base_model.json, where there is one)."""
    with open(os.path.join(adapter_dir, ADAPTER_CONFIG), encoding="utf-8") as f:
        named = json.load(f).get("base_model_name_or_path")
    base = base_dir or named
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        raise InputError(f"{os.path.join(adapter_dir, ADAPTER_CONFIG)}: base_model_name_or_path {named!r} is not an "
                         "HF model folder here; give the base the adapters were trained on with --base_model DIR")
    record = recorded_base(adapter_dir)
    if record and weights_sha256(base) != record["weights_sha256"]:
        flag = "--base_model" if base_dir else os.path.join(adapter_dir, ADAPTER_CONFIG) + ": base"
        raise InputError(f"{flag} {base}: its weights are not those the adapters were trained on ({record['path']}, "
                         f"SHA-256 {record['weights_sha256'][:12]} in {BASE_RECORD}); give that base")
    return base


def export_adapter(adapter_dir: str, output_dir: str, merge: bool, dtype: Optional[str] = None,
                   base_dir: Optional[str] = None, max_shard_size: str = "5GB") -> dict:
    base = base_of(adapter_dir, base_dir)
    check_output(output_dir, "--output_dir", [adapter_dir, base])  # a merge into its base would overwrite it
    os.makedirs(output_dir, exist_ok=True)
    if not merge:
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD):
            if os.path.isfile(os.path.join(adapter_dir, name)):
                shutil.copyfile(os.path.join(adapter_dir, name), os.path.join(output_dir, name))
        copied = copy_tokenizer_files(adapter_dir, output_dir) or copy_tokenizer_files(base, output_dir)
        return {"output_dir": output_dir, "adapter": True, "base": base, "tokenizer_files": copied}

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..model.build import DTYPES

    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    target = DTYPES[dtype] if dtype else getattr(model.config, "torch_dtype", None) or torch.float32
    target = getattr(torch, target) if isinstance(target, str) else target
    try:
        merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:  # another shape: a size mismatch deep inside peft
        raise InputError(f"--base_model {base}: the adapters of {adapter_dir} do not fit it "
                         f"({str(e).strip().splitlines()[0][:200]}); give the base they were trained on") from None
    merged.to(target).save_pretrained(output_dir, safe_serialization=True, max_shard_size=max_shard_size)
    copied = copy_tokenizer_files(adapter_dir, output_dir) or copy_tokenizer_files(base, output_dir)
    return {"output_dir": output_dir, "adapter": False, "merged_into": base,
            "dtype": str(target).replace("torch.", ""), "tokenizer_files": copied}
