"""The output folder of a preparation run: checked before any work, built as OUT.tmp-<pid>, swapped in whole.

Each refusal is one `error: --data_output_dirs: ...` line, given before a single line is tokenized:
- OUT must not be, contain, or lie inside an input folder or the tokenizer folder (compared by real
  path, so a symlink is no way around it): `--overwrite` would otherwise delete the corpus.
- An existing OUT is replaced only with `--overwrite`, and only when it is recognisably a dataset we
  wrote: a manifest.json of ours and nothing but the category/bin folders it lists. We never delete
  what we did not write.
- Leftover OUT.tmp-<pid> folders of killed runs are reported; those whose process is gone are removed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from typing import Callable, Dict, Optional

from ..errors import InputError
from .bins import BIN_FILES, is_bin_dirname
from .manifest import MANIFEST

FLAG = "--data_output_dirs"
# What a failed write looks like: full disk or quota, read-only or forbidden folder, file size limit.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO,
                errno.ENOTDIR, errno.ENOENT}


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_apart(out_dir: str, inputs: Dict[str, str], flag: str = FLAG) -> None:
    """Refuse an output that is, contains, or is inside any of `inputs` ({folder: what it is})."""
    out_real = os.path.realpath(out_dir)
    for folder, what in inputs.items():
        real = os.path.realpath(folder)
        if out_real == real:
            relation = f"is the {what} {folder}"
        elif _inside(real, out_real):
            relation = f"contains the {what} {folder}"
        elif _inside(out_real, real):
            relation = f"is inside the {what} {folder}"
        else:
            continue
        raise InputError(f"{flag}: {out_dir} {relation}; choose an output folder outside every input folder "
                         f"and the tokenizer folder")


def check_replaceable(out_dir: str, overwrite: bool) -> None:
    """An existing OUT: refused without --overwrite; with it, refused unless it is a dataset we wrote."""
    if not os.path.lexists(out_dir):
        return
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        kind = "a symbolic link" if os.path.islink(out_dir) else "an existing file"
        raise InputError(f"{FLAG}: {out_dir} is {kind}, not a prepared dataset folder; remove it yourself or "
                         f"choose another path")
    if not overwrite:
        raise InputError(f"{out_dir}: output folder exists; remove it or pass --overwrite")
    foreign = foreign_content(out_dir)
    if foreign:
        raise InputError(f"{FLAG}: {out_dir} {foreign}, so it is not a dataset prepare_*_dataset.py wrote and "
                         f"--overwrite will not delete it; remove it yourself or choose another path")


def foreign_content(out_dir: str) -> Optional[str]:
    """None when everything under `out_dir` is what a preparation run writes, else what is not."""
    try:
        with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return "has no manifest.json"
    except (OSError, ValueError):
        return "has a manifest.json that does not parse"
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("pretrain", "sft", "preference") \
            or not isinstance(manifest.get("categories"), dict):
        return "has a manifest.json of another kind"
    categories = manifest["categories"]
    ours = {figures.get("dirname") for figures in categories.values() if isinstance(figures, dict)}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name == MANIFEST:
            continue
        if name not in ours or os.path.islink(path) or not os.path.isdir(path):
            return f"holds {name!r}, which its manifest.json does not list"
        for bin_name in sorted(os.listdir(path)):
            bin_path = os.path.join(path, bin_name)
            if not is_bin_dirname(bin_name) or os.path.islink(bin_path) or not os.path.isdir(bin_path):
                return f"holds {os.path.join(name, bin_name)!r}, which is not a bin folder"
            extra = sorted(set(os.listdir(bin_path)) - set(BIN_FILES))
            if extra:
                return f"holds {os.path.join(name, bin_name, extra[0])!r}, which is not part of a bin"
    return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our pid on a leftover: a killed run whose pid was reused (containers restart at low pids)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid at all: either way not ours to clean
    return True


def clean_stale(out_dir: str) -> None:
    """Report OUT.tmp-<pid>[.old] folders; remove those whose process no longer runs (one line each).

    A pid is only checked on this machine: a prepare running elsewhere on a shared filesystem into the
    same OUT is not seen (two runs into one OUT are a mistake either way)."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    pattern = re.compile(re.escape(os.path.basename(out_dir)) + r"\.tmp-(\d+)(\.old)?")
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        path = os.path.join(parent, name)
        if not match or os.path.islink(path) or not os.path.isdir(path):
            continue
        pid = int(match.group(1))
        if _alive(pid):
            print(f"note: {path} belongs to process {pid}, which is still running (another prepare into "
                  f"{out_dir}?); left alone", file=sys.stderr)
            continue
        try:
            shutil.rmtree(path)
        except OSError as e:
            print(f"note: {path}, left by process {pid} (no longer running), could not be removed: {e.strerror}",
                  file=sys.stderr)
            continue
        print(f"note: removed {path}, left by process {pid} (no longer running) of an interrupted prepare",
              file=sys.stderr)


def make_tmp(out_dir: str) -> str:
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp_dir)
    except OSError as e:
        raise InputError(f"{FLAG}: cannot create {tmp_dir}: {e.strerror}; choose a folder you can write to") from None
    return tmp_dir


def write_failure(e: OSError, tmp_dir: str, out_dir: str) -> Optional[InputError]:
    """The one-line error for a failed write into `tmp_dir` (disk full, read-only, ...), or None if `e` is not one."""
    if e.errno not in WRITE_ERRNOS and "No space left" not in str(e) and "File too large" not in str(e):
        return None
    what = e.strerror or str(e).strip().splitlines()[-1]
    return InputError(f"{FLAG}: writing {tmp_dir} failed: {what}; free space or choose a writable folder, "
                      f"then run again ({out_dir} was not changed)")


def replace(tmp_dir: str, out_dir: str, flag: str = FLAG,
            foreign_of: Callable[[str], Optional[str]] = None) -> None:
    """Move the finished `tmp_dir` to `out_dir`; an existing `out_dir` (checked again with `foreign_of`, by
    default foreign_content: it may have changed since the start) is moved aside first and deleted last, so a
    crash leaves one of the two whole."""
    old = None
    if os.path.lexists(out_dir):
        foreign = None if os.path.isdir(out_dir) and not os.path.islink(out_dir) else "is no longer a folder"
        foreign = foreign or (foreign_of or foreign_content)(out_dir)
        if foreign:
            raise InputError(f"{flag}: {out_dir} {foreign} (it changed during the run); remove it yourself or "
                             f"choose another path")
        old = f"{tmp_dir}.old"
        os.rename(out_dir, old)
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        if old:
            os.rename(old, out_dir)
        raise
    if old:
        shutil.rmtree(old)
