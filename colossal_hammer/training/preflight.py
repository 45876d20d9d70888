"""What train.py checks before it spends an hour: each problem one `error:` line with the flag and the fix.

Rank 0 looks (at the file system, the datasets, the checkpoints) and every rank gets its answer, so ranks
never disagree on a shared file system about which checkpoint to resume or whether to stop.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from typing import Callable, Optional

import torch.distributed as dist

from ..errors import InputError
from ..model.adapter_folder import is_adapter_folder
from . import run_lock
from .checkpoint import checkpoint_problem, complete_checkpoints, newest_good_checkpoint, our_folders, weights_problem
from .config import TrainConfig
from .rank_files import has_rank_optimizer

# Settings a checkpoint cannot be resumed across: the model it started from (which stage it is), and the
# plugin layout that shaped its optimizer files. The data-parallel size may change (the sampler re-splits)
# when the optimizer states were gathered (ddp, --optimizer_checkpoint gathered), not when each rank wrote its own.
STAGE_KEYS = ("pretrained", "model_config", "load_weights_only", "freeze_non_embeds_params")
# The objective and the adapters too: a checkpoint of one is not resumed as another. A flag newer than a
# checkpoint counts as its default there (a checkpoint from before --task existed is "lm").
LAYOUT_KEYS = ("plugin", "tp", "pp", "sp", "sp_mode", "zero_stage", "mixed_precision", "optimizer", "lora_rank",
               "lora_target_modules", "lora_modules_to_save", "task", "dpo_loss", "beta", "simpo_gamma", "rope_theta",
               "rope_scaling", "rope_factor")
# Adapter settings that change what the saved adapters compute: compared when the checkpoint is a LoRA run's.
LORA_KEYS = ("lora_alpha", "lora_dropout")
# How a run starts rather than what it trains: expected to differ from the checkpoint's.
RESUME_KEYS = ("load_checkpoint", "resume", "overwrite_checkpoints", "plan")
# Bytes per parameter of one checkpoint, at most: fp32 weights or bf16 weights + fp32 masters, two fp32 moments.
CHECKPOINT_BYTES_PER_PARAM = 16


def fail(message: str):
    raise InputError(message)


def agreed(fn: Callable):
    """fn() on rank 0; its result, or its error line, reaches every rank (only rank 0 prints the error)."""
    if not dist.is_initialized():
        return fn()
    payload = [None]
    if dist.get_rank() == 0:
        try:
            payload = [("ok", fn())]
        except InputError as e:
            payload = [("error", str(e))]
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        if dist.get_rank() == 0:
            raise InputError(value)
        raise SystemExit(2)  # said by rank 0
    return value


def check_writable(folder: str, flag: str) -> None:
    """Create the folder and write a file in it now, not at the first save hours later."""
    probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        cannot_write(folder, flag, e)


def cannot_write(folder: str, flag: str, e: OSError):
    fail(f"{flag} {folder}: cannot write there ({e.strerror or e}); give a folder this user can write")


def _describe_source(config: dict) -> str:
    for key in ("load_weights_only", "pretrained", "model_config"):
        if config.get(key):
            frozen = ", embeddings only" if config.get("freeze_non_embeds_params") else ""
            return f"--{key} {config[key]}{frozen}"
    return "?"


def new_stage_from(path: str) -> str:
    """How to start a new stage from a checkpoint's weights: --load_weights_only, once a LoRA checkpoint's
    adapters are merged into whole weights (--load_weights_only refuses an adapter folder)."""
    if is_adapter_folder(os.path.join(path, "modeling")):
        return (f"merge its adapters (python -m colossal_hammer.model.export --checkpoint {path} --output_dir DIR "
                "--merge_lora) and start a new stage from them with --load_weights_only DIR")
    return f"start a new stage from its weights with --load_weights_only {path}"


def check_same_run(path: str, cfg: TrainConfig, base: Optional[dict] = None) -> None:
    """A checkpoint resumes only the stage and plugin layout that wrote it (and a LoRA checkpoint only on the
    base weights its adapters were trained on: `base` is adapter_folder.base_record of this run's)."""
    with open(os.path.join(path, "running_states.json"), encoding="utf-8") as f:
        saved_states = json.load(f)
    saved = {**json.loads(TrainConfig().to_json()), **saved_states.get("config", {})}
    if saved.get("lora_rank") == 0:  # before --lora_rank had no default, 0 meant "no adapters"
        saved["lora_rank"] = None
    current = json.loads(cfg.to_json())
    if any(saved.get(k) != current.get(k) for k in STAGE_KEYS):
        fail(f"{path} belongs to another stage (it started from {_describe_source(saved)}; this run starts from "
             f"{_describe_source(current)}): give this stage its own --save_dir, or {new_stage_from(path)}")
    world = dist.get_world_size() if dist.is_initialized() else 1
    saved_world = saved_states.get("world_size")
    if has_rank_optimizer(os.path.join(path, "optimizer")) and saved_world not in (None, world):
        fail(f"{path} holds the optimizer states of each of {saved_world} processes (--optimizer_checkpoint "
             f"per_rank); resume it with {saved_world} processes, or {new_stage_from(path)}")
    if has_rank_optimizer(os.path.join(path, "optimizer")) and saved.get("ep") != current.get("ep"):
        # each rank's file holds the states of its own experts: another split reads another rank's
        fail(f"{path} holds each rank's optimizer states for --ep {saved.get('ep')} (--optimizer_checkpoint "
             f"per_rank); resume it with --ep {saved.get('ep')} (a gathered checkpoint resumes on another --ep)")
    saved_base = saved_states.get("lora_base")
    if base and saved_base and saved_base["weights_sha256"] != base["weights_sha256"]:
        fail(f"{path} holds LoRA adapters trained on other base weights ({saved_base['path']}, SHA-256 "
             f"{saved_base['weights_sha256'][:12]}; {base['path']} has {base['weights_sha256'][:12]}): resume it on "
             "the base it was trained on")
    keys = LAYOUT_KEYS + (LORA_KEYS if saved.get("lora_rank") is not None else ())
    changed = [k for k in keys if saved.get(k) != current.get(k)]
    if changed:
        def flags(values):
            return " ".join(f"--{k} {values.get(k)}" if values.get(k) is not None else f"no --{k}" for k in changed)

        was, now = flags(saved), flags(current)
        fail(f"{path} was saved with {was}, this run has {now}: resume it with the same flags (or config file), or "
             f"{new_stage_from(path)} and a new --save_dir")
    differ = [k for k in current if k not in RESUME_KEYS and saved.get(k) != current.get(k)]
    if differ:  # allowed (a new learning rate, more steps...), but never unnoticed
        print(f"note: resuming {path} with settings changed since it was saved: "
              + ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in differ), flush=True)


def choose_start(cfg: TrainConfig, base: Optional[dict] = None) -> Optional[str]:
    """The checkpoint this run resumes (None: step 0), after making sure save_dir holds no other run, live
    (its lock) or finished (its checkpoints)."""
    save_dir = cfg.save_dir
    existed = os.path.isdir(save_dir)
    try:
        run_lock.hold(save_dir)
    except run_lock.SaveDirBusy as e:
        fail(f"--save_dir {save_dir} is in use by a run still going ({e}): wait for it to end, stop it, or give "
             "another --save_dir")
    except OSError as e:
        cannot_write(save_dir, "--save_dir", e)
    if cfg.load_checkpoint:
        problem = checkpoint_problem(cfg.load_checkpoint)
        if problem:
            fail(f"--load_checkpoint {cfg.load_checkpoint}: cannot be resumed ({problem})")
        check_same_run(cfg.load_checkpoint, cfg, base)
        return cfg.load_checkpoint
    if cfg.resume == "auto":
        if not complete_checkpoints(save_dir):
            what = "does not exist" if not existed else "holds no step-N checkpoint"
            print(f"resume auto: {save_dir} {what}; starting from step 0", flush=True)
            return None
        path = newest_good_checkpoint(save_dir, report=lambda line: print(line, file=sys.stderr, flush=True))
        if path is None:
            fail(f"--resume auto: no checkpoint in {save_dir} can be resumed (each is listed above); remove them or "
                 "give a new --save_dir")
        check_same_run(path, cfg, base)
        print(f"resume auto: resuming from {path}", flush=True)
        return path
    found = our_folders(save_dir)
    if found and not cfg.overwrite_checkpoints:
        fail(f"--save_dir {save_dir} already holds checkpoints of an earlier run ({', '.join(found[:4])}"
             f"{' ...' if len(found) > 4 else ''}): continue it with --resume auto, give a new --save_dir, or "
             "pass --overwrite_checkpoints to delete them")
    for name in found:
        shutil.rmtree(os.path.join(save_dir, name))
    if found:
        print(f"--overwrite_checkpoints: deleted {len(found)} checkpoint folder(s) in {save_dir}", flush=True)
    return None


def check_metrics_file(cfg: TrainConfig, resumed: bool) -> None:
    metrics = os.path.join(cfg.tensorboard_dir, "metrics.jsonl")
    if resumed or cfg.resume == "auto" or cfg.overwrite_checkpoints:
        return  # a resumed run cuts the file back to its checkpoint; an overwrite starts it anew
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        fail(f"--tensorboard_dir {cfg.tensorboard_dir} already holds metrics.jsonl of an earlier run: give a new "
             "--tensorboard_dir, continue that run with --resume auto, or pass --overwrite_checkpoints")


def _manifests(cfg: TrainConfig) -> list:
    found = []
    for root in cfg.dataset or []:
        path = os.path.join(root, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                found.append((root, json.load(f)))
        except FileNotFoundError:
            fail(f"--dataset {root}: not a prepared dataset (no manifest.json); make it with prepare_*_dataset.py")
        except (OSError, ValueError) as e:
            fail(f"{path}: unreadable ({e})")
    return found


def _max_token_id(root: str, manifest: dict) -> int:
    """The largest input id in a prepared dataset, read column-wise from its Arrow files."""
    import pyarrow.compute as pc
    from datasets import load_from_disk

    largest = -1
    for figures in manifest["categories"].values():
        for k in range(len(figures["bins"])):
            table = load_from_disk(os.path.join(root, figures["dirname"], f"bin-{k:05d}")).data.table
            if table.num_rows:
                value = pc.max(pc.list_flatten(table.column("input_ids"))).as_py()
                largest = max(largest, -1 if value is None else value)
    return largest


def _check_rows(label: str, root: str, manifest: dict, cfg: TrainConfig, vocab_size: int) -> int:
    """Rows fit --max_length and token ids fit the model's vocabulary; returns the largest id."""
    prepared = manifest.get("settings", {}).get("max_length")
    if prepared is not None and prepared > cfg.max_length:
        fail(f"{label}: rows are up to {prepared} tokens long (prepared with --max_length {prepared}) "
             f"but --max_length is {cfg.max_length}: train with --max_length {prepared}, or prepare the data "
             f"again with --max_length {cfg.max_length}")
    largest = _max_token_id(root, manifest)
    if largest >= vocab_size:
        fail(f"{label}: token id {largest} is outside the model's vocabulary of {vocab_size}: train "
             "the model the dataset's tokenizer was extended for (init_embeddings), or prepare the data with "
             "this model's tokenizer")
    return largest


def check_datasets(cfg: TrainConfig, manifests: list, vocab_size: int) -> None:
    """Rows fit --max_length, category weights name real categories, token ids fit the model's vocabulary."""
    categories = set()
    for root, manifest in manifests:
        preference = manifest.get("kind") == "preference"
        if preference != (cfg.task == "dpo"):
            fail(f"--dataset {root}: a {manifest.get('kind')} dataset " + (
                "holds preference pairs: train it with --task dpo" if preference else
                "holds no preference pairs: --task dpo needs a prepare_preference_dataset.py dataset"))
        _check_rows(f"--dataset {root}", root, manifest, cfg, vocab_size)
        categories.update(manifest.get("categories", {}))
    unknown = sorted(set(cfg.weights_by_category()) - categories)
    if cfg.dataset and unknown:
        fail(f"--category_weights: no category {', '.join(map(repr, unknown))} in the datasets; they have: "
             f"{', '.join(sorted(categories))}")


def check_eval_sets(cfg: TrainConfig, vocab_size: int, tokenizer_dir: Optional[str]) -> None:
    """Each --eval_dataset NAME=DIR is a prepared dataset this model can score, and a tokenizer counts its bytes."""
    manifests = []
    for name, root in cfg.eval_sets():
        label = f"--eval_dataset {name}={root}"
        if not os.path.isdir(root):
            fail(f"{label}: no such folder; give a prepare_*_dataset.py output folder")
        path = os.path.join(root, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            fail(f"{label}: not a prepared dataset (no manifest.json); make it with prepare_*_dataset.py")
        except (OSError, ValueError) as e:
            fail(f"{path}: unreadable ({e})")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("categories"), dict):
            fail(f"{path}: not a prepare_*_dataset.py manifest; prepare the eval set again")
        manifests.append((label, root, manifest))
    if not manifests:
        return
    if tokenizer_dir is None:
        fail("--eval_tokenizer_dir: the model comes without a tokenizer, and bits per byte counts the bytes of the "
             "eval sets' tokens; give the tokenizer they were prepared with")
    from ..data.tokenize import load_tokenizer
    from ..errors import InputError

    try:
        tokens = len(load_tokenizer(tokenizer_dir))
    except InputError as e:
        fail(f"--eval_tokenizer_dir: {e}")
    for label, root, manifest in manifests:
        largest = _check_rows(label, root, manifest, cfg, vocab_size)
        if largest >= tokens:
            fail(f"{label}: token id {largest} is outside the tokenizer {tokenizer_dir} ({tokens} tokens): give "
                 "the tokenizer the set was prepared with (--eval_tokenizer_dir)")


def size_text(nbytes: float) -> str:
    """Bytes in the largest unit that keeps a figure above 1 (a tiny model's checkpoint is not "0.0 GiB")."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} bytes"


def check_free_space(save_dir: str, num_params: int) -> None:
    need = num_params * CHECKPOINT_BYTES_PER_PARAM
    free = shutil.disk_usage(save_dir).free
    if free < need:
        fail(f"--save_dir {save_dir}: {size_text(free)} free, one checkpoint of {num_params:,} parameters "
             f"needs up to {size_text(need)}: free space or choose another --save_dir")


def dataset_chat_template(manifests: list) -> Optional[str]:
    """The chat template SFT data was rendered with (prepare_sft_dataset.py records it), if any."""
    templates = {m.get("chat_template") for _, m in manifests} - {None}
    if len(templates) > 1:
        fail("--dataset: the SFT datasets were rendered with different chat templates; prepare them with one "
             "tokenizer and --llama_version, so the model learns one format")
    return templates.pop() if templates else None


def before_start(cfg: TrainConfig, vocab_size: int, eval_tokenizer: Optional[str] = None,
                 lora_base: Optional[str] = None) -> dict:
    """Every check that needs no model; returns what the run starts from (with LoRA, the base's record)."""
    manifests = _manifests(cfg)
    if cfg.dataset:
        check_datasets(cfg, manifests, vocab_size)
    check_eval_sets(cfg, vocab_size, eval_tokenizer)
    if cfg.load_weights_only and (problem := weights_problem(cfg.load_weights_only)):
        fail(f"--load_weights_only {cfg.load_weights_only}: {problem}; give an intact checkpoint")
    base = None
    if lora_base:
        from ..model.adapter_folder import base_record

        base = base_record(lora_base)
    start = choose_start(cfg, base)  # first: it tells a save_dir that does not exist from one that is empty
    check_writable(cfg.save_dir, "--save_dir")
    check_writable(cfg.tensorboard_dir, "--tensorboard_dir")
    check_metrics_file(cfg, resumed=start is not None)
    return {"resume_from": start, "chat_template": dataset_chat_template(manifests), "lora_base": base}
