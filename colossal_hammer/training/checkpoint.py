"""Checkpoints that a crash cannot corrupt, and everything a resumed run needs to be the same run.

SAVE_DIR/step-N/
  modeling/            weights (safetensors, HF names) + config.json + the tokenizer when known; with
                       --lora_rank peft's adapter folder instead (adapters + modules_to_save, naming its base
                       and, in base_model.json, the SHA-256 of the base's weights)
  optimizer/           ddp: the Booster's optimizer files (rank 0's copy; every rank holds the same).
                       zero2, zero2_cpu, gemini, 3d: rank-R-*.safetensors + rank-R.json, the states each
                       rank owns, written by that rank (rank_files.py: nothing is gathered)
  lr_scheduler/state.json
  rng/rank-R.json      torch (CPU and CUDA), numpy and Python RNG states of every rank
  master/rank-R-*.safetensors  ZeRO's fp32 master shards (the Booster saves only the bf16/fp16 working
                       weights, from which a resumed run would re-derive rounded masters and drift)
  master/gemini-rank-R-*.safetensors  the same for Gemini: this rank's shard of every fp32 master chunk
  reference_logps.safetensors  DPO only: the frozen reference log-probs of every pair (training/dpo.py)
  running_states.json  step, epoch, sampler state, data-parallel size, and the run's settings
  files.json           every file above with its size and SHA-256, written last

Weights and every per-rank file are cut into files of at most --checkpoint_shard_size MB.
Every rank writes into SAVE_DIR/.tmp-step-N/ and rank 0 renames it to step-N only after all have
finished, so a step-N folder is complete by construction; a run killed mid-save leaves a .tmp folder
that `--resume auto` ignores. A step-N damaged afterwards (a truncated or deleted file, a copy that
stopped halfway, bytes overwritten in place) is found by `checkpoint_problem` against files.json's sizes
and content hashes and the safetensors headers, and `--resume auto` falls back to the previous good one.
Nothing here is unpickled: JSON, safetensors, and the Booster's optimizer files, which torch >= 2.6 loads
with weights_only=True.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError

from ..adapters import lora
from ..digest import sha256_of_files
from ..errors import InputError, describe_os_error
from ..model.adapter_folder import is_adapter_folder
from ..tokenizer.files import copy_tokenizer_files
from . import faults
from .rank_files import has_rank_optimizer, load_optimizer, read_tensors, save_optimizer, save_tensors

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_DIR = re.compile(r"^\.tmp-step-(\d+)$")
FILES = "files.json"


def complete_checkpoints(save_dir: str) -> list[str]:
    """step-N folders in save_dir, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(save_dir) if (m := STEP_DIR.match(name))]
    return [os.path.join(save_dir, name) for _, name in sorted(found)]


def our_folders(save_dir: str) -> list[str]:
    """Names of the folders a run writes into save_dir (step-N and unfinished .tmp-step-N)."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(n for n in os.listdir(save_dir) if STEP_DIR.match(n) or TMP_DIR.match(n))


def _safetensors_problem(path: str) -> Optional[str]:
    """Is the file as long as its header says? (A truncated copy fails here before any tensor is read.)"""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                return "header cut off"
            header = json.loads(f.read(header_len))
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size != 8 + header_len + end:
        return f"{size} bytes, the header describes {8 + header_len + end}"
    return None


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the step-N folder at `path` cannot be resumed, or None if it is complete and unchanged since its save."""
    try:
        _read_json(os.path.join(path, "running_states.json"))
    except (OSError, ValueError) as e:
        return f"running_states.json unreadable ({e.__class__.__name__})"
    expected = _listed_files(path)
    if isinstance(expected, str):
        return expected
    if problem := _size_problem(path, expected):
        return problem
    for sub in ("modeling", "optimizer"):
        if not os.path.isdir(os.path.join(path, sub)) or not os.listdir(os.path.join(path, sub)):
            return f"{sub}/ is missing or empty"
    for root, _, names in os.walk(path):
        for name in names:
            if name.endswith(".safetensors") and (problem := _safetensors_problem(os.path.join(root, name))):
                return f"{os.path.relpath(os.path.join(root, name), path)}: {problem}"
    return _content_problem(path, expected)


def weights_problem(path: str) -> Optional[str]:
    """Why the weights of the step-N folder at `path` (its modeling/) are not those it saved, or None; an HF
    folder, or a checkpoint from before files.json, has nothing recorded to check against."""
    expected = _listed_files(path)
    if isinstance(expected, str):
        return expected
    expected = {rel: entry for rel, entry in expected.items() if rel.startswith("modeling/")}
    return _size_problem(path, expected) or _content_problem(path, expected)


def _listed_files(path: str):
    """files.json's {relative path: {"size", "sha256"}} ({} without one), or why it cannot be read."""
    listing = os.path.join(path, FILES)
    if not os.path.isfile(listing):
        return {}
    try:
        return {rel: entry if isinstance(entry, dict) else {"size": entry}  # older: sizes only
                for rel, entry in _read_json(listing).items()}
    except (OSError, ValueError, AttributeError):
        return f"{FILES} unreadable"


def _size_problem(path: str, expected: dict) -> Optional[str]:
    for rel, entry in expected.items():
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            return f"{rel} is missing"
        if os.path.getsize(file) != entry["size"]:
            return f"{rel} has {os.path.getsize(file)} bytes, {entry['size']} were written"
    return None


def _content_problem(path: str, expected: dict) -> Optional[str]:
    hashed = {rel: entry["sha256"] for rel, entry in expected.items() if "sha256" in entry}
    digests = sha256_of_files(os.path.join(path, rel) for rel in hashed)
    for rel, digest in hashed.items():
        if digests[os.path.join(path, rel)] != digest:
            return f"{rel}: its content changed since it was saved (SHA-256 differs)"
    return None


def newest_good_checkpoint(save_dir: str, report=print) -> Optional[str]:
    """The newest step-N that is complete; each newer damaged one is reported and passed over."""
    for path in reversed(complete_checkpoints(save_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        report(f"warning: {path} cannot be resumed ({problem}); trying the previous checkpoint")
    return None


def _file_listing(folder: str) -> dict:
    """{relative path: {size, sha256}} of every file under folder."""
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)
    digests = sha256_of_files(paths)
    return {os.path.relpath(p, folder): {"size": os.path.getsize(p), "sha256": digests[p]} for p in paths}


def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


def _read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class Checkpointer:
    def __init__(self, booster, save_dir: str, keep_last: int = 0, tokenizer_dir: Optional[str] = None,
                 chat_template: Optional[str] = None, shard_size_mb: float = 1024, per_rank_optimizer: bool = True,
                 adapter_base: Optional[dict] = None):
        self.booster = booster
        self.adapter_base = adapter_base  # LoRA: modeling/ holds the adapters of this base (adapter_folder.base_record)
        self.shard_size_mb = shard_size_mb
        self.per_rank_optimizer = per_rank_optimizer  # False for ddp, whose ranks hold the same states
        self.save_dir = save_dir
        self.keep_last = keep_last
        self.tokenizer_dir = tokenizer_dir
        self.chat_template = chat_template  # the template SFT data was rendered with, for inference to reuse
        self.rank = dist.get_rank()
        self.extra_files = {}  # name in step-N/ -> file rank 0 copies there (DPO's reference log-probs)

    def save(self, step: int, model, optimizer, lr_scheduler, running_states: dict) -> str:
        """Every rank writes its part into .tmp-step-N; rank 0 lists it and renames it step-N. A write that fails
        on any rank (a full disk) ends the run in one line with the unfinished folder removed: the checkpoints
        already there are untouched."""
        final = os.path.join(self.save_dir, f"step-{step}")
        tmp = os.path.join(self.save_dir, f".tmp-step-{step}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        dist.barrier()
        self._agree_or_stop(step, tmp, lambda: self._write(step, tmp, model, optimizer, lr_scheduler, running_states))

        def publish():
            if self.rank == 0:
                _write_json(os.path.join(tmp, FILES), _file_listing(tmp))
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)

        self._agree_or_stop(step, tmp, publish)
        if self.rank == 0:
            self._prune()
        dist.barrier()
        return final

    def _agree_or_stop(self, step: int, tmp: str, write) -> None:
        """write() on every rank; if it failed on any, remove the unfinished folder and stop every rank."""
        try:
            write()
            failure = None
        except OSError as e:
            failure = describe_os_error(e)
        except (RuntimeError, SafetensorError) as e:  # on a full disk: torch's zip writer says "unexpected pos
            failure = (str(e).strip().splitlines() or [type(e).__name__])[0]  # ...", safetensors "I/O error: ..."
        failures = [None] * dist.get_world_size()
        dist.all_gather_object(failures, failure)
        failed = [(rank, f) for rank, f in enumerate(failures) if f is not None]
        if not failed:
            return
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        rank, reason = failed[0]
        raise InputError(f"--save_dir {self.save_dir}: saving step {step} failed on rank {rank} ({reason}); its "
                         "unfinished folder was removed and earlier checkpoints are untouched: free space, then "
                         "continue with --resume auto")

    def _write(self, step: int, tmp: str, model, optimizer, lr_scheduler, running_states: dict) -> None:
        if self.adapter_base:
            lora.save_adapter(self.booster, model, os.path.join(tmp, "modeling"), self.adapter_base)
        else:
            self.booster.save_model(model, os.path.join(tmp, "modeling"), shard=True, use_safetensors=True,
                                    size_per_shard=self.shard_size_mb)
        faults.kill_if("kill_mid_save", step)  # weights written, the rest not: a crash mid-save
        shard_bytes = int(self.shard_size_mb * 1024**2)
        if self.per_rank_optimizer:
            save_optimizer(optimizer, os.path.join(tmp, "optimizer"), self.rank, shard_bytes)
        else:
            self.booster.save_optimizer(optimizer, os.path.join(tmp, "optimizer"), shard=True,
                                        size_per_shard=self.shard_size_mb)
        _write_json(os.path.join(tmp, "rng", f"rank-{self.rank}.json"), rng_state())
        masters = zero_master_params(optimizer)
        if masters is not None:
            save_tensors(((str(i), p) for i, p in enumerate(masters)), os.path.join(tmp, "master"),
                         f"rank-{self.rank}", shard_bytes)
        save_gemini_masters(optimizer, os.path.join(tmp, "master"), self.rank, shard_bytes)
        if self.rank == 0:
            self._save_model_files(model, os.path.join(tmp, "modeling"))
            _write_json(os.path.join(tmp, "lr_scheduler", "state.json"), lr_scheduler.state_dict())
            for name, source in sorted(self.extra_files.items()):
                shutil.copyfile(source, os.path.join(tmp, name))
            _write_json(os.path.join(tmp, "running_states.json"),
                        {**running_states, "step": step, "world_size": dist.get_world_size()})

    def _save_model_files(self, model, modeling_dir: str) -> None:
        config = getattr(lora.inner_model(model), "config", None)
        if config is not None and not self.adapter_base:  # an adapter folder names its base instead
            # saved as True, the flag makes from_pretrained of this folder keep eager attention, not SDPA
            autoset = getattr(config, "_attn_implementation_autoset", None)
            config._attn_implementation_autoset = False
            config.save_pretrained(modeling_dir)
            config._attn_implementation_autoset = autoset
        if self.tokenizer_dir:
            copy_tokenizer_files(self.tokenizer_dir, modeling_dir)
        if self.chat_template:
            write_chat_template(modeling_dir, self.chat_template)

    def _prune(self) -> None:
        if self.keep_last > 0:
            for old in complete_checkpoints(self.save_dir)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, path: str, model, optimizer, lr_scheduler) -> dict:
        """Restore everything into the boosted objects; returns running_states.json."""
        if not os.path.isfile(os.path.join(path, "running_states.json")):
            raise InputError(f"{path}: not a complete checkpoint (no running_states.json)")
        if is_adapter_folder(os.path.join(path, "modeling")):
            lora.load_adapter(model, os.path.join(path, "modeling"))
        else:
            self.booster.load_model(model, os.path.join(path, "modeling"))
        if has_rank_optimizer(os.path.join(path, "optimizer")):
            try:
                load_optimizer(optimizer, os.path.join(path, "optimizer"), self.rank)
            except ValueError as e:
                raise InputError(f"{e}; resume it with the flags and number of processes that saved it")
        else:
            self.booster.load_optimizer(optimizer, os.path.join(path, "optimizer"))
        lr_scheduler.load_state_dict(_read_json(os.path.join(path, "lr_scheduler", "state.json")))
        rng_file = os.path.join(path, "rng", f"rank-{self.rank}.json")
        if os.path.isfile(rng_file):
            set_rng_state(_read_json(rng_file))
        states = _read_json(os.path.join(path, "running_states.json"))
        masters = zero_master_params(optimizer)
        if masters is not None and states.get("world_size") != dist.get_world_size() and self.rank == 0:
            print(f"warning: {path}: saved by {states.get('world_size')} processes; ZeRO's fp32 masters restart from "
                  "the saved bf16/fp16 weights (the run continues, not bit-identically)", flush=True)
        if masters is not None and states.get("world_size") == dist.get_world_size():
            _, saved = read_tensors(os.path.join(path, "master"), f"rank-{self.rank}")
            saved = dict(saved)
            if len(saved) == len(masters) and all(saved[str(i)].shape == p.shape for i, p in enumerate(masters)):
                with torch.no_grad():
                    for i, p in enumerate(masters):
                        p.copy_(saved[str(i)])
        load_gemini_masters(optimizer, os.path.join(path, "master"), self.rank)
        return states


def write_chat_template(modeling_dir: str, template: str) -> None:
    """Put the SFT data's chat template into tokenizer_config.json, unless the tokenizer has its own."""
    path = os.path.join(modeling_dir, "tokenizer_config.json")
    config = _read_json(path) if os.path.isfile(path) else {}
    if not config.get("chat_template"):
        config["chat_template"] = template
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)


def zero_master_params(optimizer) -> Optional[list]:
    """This rank's fp32 master parameters where they differ from the working weights the Booster saves.

    Every optimizer that keeps masters says so through `get_master_to_working_map()` (LowLevelZero for
    zero2 and 3d with ZeRO; the hybrid AMP optimizer for 3d with zero_stage 0 and tp/pp); fp32 training has
    none worth saving, since the saved working weights are the masters."""
    get_map = getattr(optimizer, "get_master_to_working_map", None)
    mapping = get_map() if get_map is not None else None
    if not mapping:
        return None
    masters = [p for group in optimizer.optim.param_groups for p in group["params"]]
    if all(mapping[id(p)].dtype == torch.float32 for p in masters if id(p) in mapping):
        return None
    return masters


# ---- Gemini ---------------------------------------------------------------------------------------
# GeminiOptimizer keeps its fp32 masters in chunks paired with the working (bf16/fp16) chunks; each rank
# holds one shard of every sharded chunk (a whole copy of a keep-gathered one). The Booster saves the
# working weights only, and loading them re-derives the masters by casting up, so an exact resume needs
# each rank's fp32 shards themselves. Keyed by chunk order; the layout is stored to refuse a mismatch.


def _gemini_master_chunks(optimizer) -> Optional[list]:
    """This rank's fp32 master chunks of a GeminiOptimizer in a fixed order, else None."""
    module = getattr(optimizer, "module", None)
    if not (hasattr(optimizer, "chunk16_set") and hasattr(module, "fp32_params") and module.fp32_params):
        return None
    return list(module.chunk_manager.get_chunks(module.fp32_params))


def _gemini_layout_key(chunks: list) -> str:
    return json.dumps([[int(c.chunk_size), int(c.shard_begin), int(c.pg_size), bool(c.keep_gathered)]
                       for c in chunks])


def save_gemini_masters(optimizer, master_dir: str, rank: int, shard_bytes: int) -> None:
    chunks = _gemini_master_chunks(optimizer)
    if chunks is None:
        return
    save_tensors(((str(i), c.payload) for i, c in enumerate(chunks)), master_dir, f"gemini-rank-{rank}",
                 shard_bytes, metadata={"layout": _gemini_layout_key(chunks)})


def load_gemini_masters(optimizer, master_dir: str, rank: int) -> None:
    """Put this rank's saved fp32 master shards back, then re-derive the working weights from them (as
    the optimizer's step does). A checkpoint from another chunk layout (world size, chunk size) keeps the
    masters cast up from the saved working weights, and says so."""
    chunks = _gemini_master_chunks(optimizer)
    if chunks is None:
        return
    metadata, saved = read_tensors(master_dir, f"gemini-rank-{rank}")
    layout = metadata.get("layout")
    if layout is not None and layout == _gemini_layout_key(chunks):
        with torch.no_grad():
            for name, tensor in saved:
                chunks[int(name)].payload.copy_(tensor)
            for chunk16 in optimizer.chunk16_set:
                chunk16.optim_update()
        return
    if rank == 0:
        reason = "no fp32 masters saved" if layout is None else "saved under another chunk layout"
        print(f"warning: {master_dir}: {reason}; Gemini's fp32 masters restart from the saved "
              "bf16/fp16 weights (the run continues, not bit-identically)", flush=True)
