"""User mistakes and file-system faults end as one `error:` line, exit status 2, no traceback.

Every CLI runs its body through `run_cli` (or the older `main_with_errors`). Expected failures are
raised as InputError with a message `<file>:<line>: <field>: <what to do>` or `--flag <value>: ...`;
an OSError (missing file, permission denied, disk full) names its file the same way. Path checks that
every tool needs (an input folder/file that exists and is of the right kind, an output that neither
is, contains nor lies inside an input) live here too, so each tool states its inputs once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class InputError(Exception):
    """The one error idiom of every command: something the user can act on (a bad flag or file, a run that
    stopped for a reason it names), in one line naming the file, line and field or the flag. The CLI runner
    (run_cli, and train.py's main on rank 0 only) prints it as `error: ...` and exits with status 2."""


def describe_os_error(e: OSError) -> str:
    """`<file>: <reason>` in one line, whatever raised it (open, makedirs, write on a full disk...)."""
    reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
    names = [n for n in (e.filename, e.filename2) if n]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def command_name(spec) -> str:
    """How a user runs this module (`python -m colossal_hammer.x.y`), for --help's usage line: argparse would
    say `__main__.py` or `y.py`. `spec` is the module's __spec__."""
    return "python -m " + spec.name.removesuffix(".__main__")


def run_cli(fn: Callable[[], T]) -> T:
    """Run a CLI body and return its result; an InputError or OSError becomes one `error:` line on
    stderr and exit status 2."""
    try:
        return fn()
    except InputError as e:
        message = str(e)
    except OSError as e:
        message = describe_os_error(e)
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_json_cli(fn: Callable[[], T]) -> T:
    """run_cli for a tool whose answer is one JSON line on stdout (export, upcycle, init_embeddings)."""
    def body():
        result = fn()
        print(json.dumps(result))
        return result

    return run_cli(body)


@contextlib.contextmanager
def writing(path: str, flag: str) -> Iterator[None]:
    """Name the output in an OSError that does not (a write or close on a full disk names no file)."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise InputError(f"{flag} {path}: {e.strerror or str(e).strip() or type(e).__name__}") from None


def write_json(path: str, obj, flag: str = "--output") -> None:
    with writing(path, flag), open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)


def main_with_errors(fn: Callable[[], object]) -> None:
    """Older spelling of run_cli, kept for the CLIs that still use it."""
    run_cli(fn)


# ---- path checks shared by the tools --------------------------------------------------------------

def require_file(path: str, flag: str, what: str = "file") -> str:
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give a {what}")
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: no such {what}")
    return path


def require_dir(path: str, flag: str, what: str = "folder", needs: Iterable[str] = (),
                hint: str = "") -> str:
    """`path` must be a folder holding at least one of `needs` (when given)."""
    if os.path.isfile(path):
        raise InputError(f"{flag} {path}: is a file; give a {what}")
    if not os.path.isdir(path):
        raise InputError(f"{flag} {path}: no such folder; give a {what}")
    needs = tuple(needs)
    if needs and not any(os.path.isfile(os.path.join(path, n)) for n in needs):
        missing = needs[0] if len(needs) == 1 else "none of " + ", ".join(needs)
        raise InputError(f"{flag} {path}: not a {what} (no {missing} in it){hint and '; ' + hint}")
    return path


TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model")


def require_tokenizer(path: str, flag: str) -> str:
    """An HF tokenizer folder (tokenizer.json or tokenizer.model in it)."""
    return require_dir(path, flag, "tokenizer folder", TOKENIZER_MARKERS)


def require_model(path: str, flag: str, with_tokenizer: bool = True) -> str:
    """An HF model folder (config.json and weights), with its tokenizer when asked."""
    require_dir(path, flag, "model folder", ("config.json",),
                "give an HF model folder, e.g. an export (python -m colossal_hammer.model.export)")
    if with_tokenizer and not any(os.path.isfile(os.path.join(path, n)) for n in TOKENIZER_MARKERS):
        raise InputError(f"{flag} {path}: the model has no tokenizer; "
                         f"copy one in with `python -m colossal_hammer.model.export --tokenizer_dir DIR`")
    return path


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output(path: str, flag: str, inputs: Iterable[Optional[str]]) -> str:
    """Refuse an output that is a file, or that is, contains or lies inside one of `inputs`: writing
    there would overwrite or mix with what the tool reads (merge into its own base, for instance)."""
    if os.path.isfile(path):
        raise InputError(f"{flag} {path}: is a file; give a folder to write into")
    out = os.path.realpath(path)
    for source in inputs:
        if not source:
            continue
        src = os.path.realpath(source)
        if _inside(out, src) or _inside(src, out):
            relation = "is" if out == src else ("is inside" if _inside(out, src) else "contains")
            raise InputError(f"{flag} {path}: {relation} the input {source}; write to a new folder")
    return path


def check_output_file(path: Optional[str], flag: str) -> Optional[str]:
    """A file to write at the end of a run: checked at the start, so a long run does not end in vain."""
    if path is None:
        return None
    if os.path.isdir(path):
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{flag} {path}: folder {parent} is not writable")
    return path


def check_finite(value, flag: str):
    """NaN passes every `x < 0` check, then poisons what it touches: refuse it, and inf, by name."""
    if value is not None and not math.isfinite(value):
        raise InputError(f"{flag} {value}: give a finite number")
    return value


def check_positive(value, flag: str, allow_zero: bool = False):
    if value is not None and (not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero)):
        raise InputError(f"{flag} {value}: must be {'0 or more' if allow_zero else 'at least 1'}")
    return value


def check_device(device: str, flag: str = "--device") -> str:
    if device == "cpu":
        return device  # without importing torch, which takes seconds
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise InputError(f"{flag} {device}: not a device; use cpu or cuda[:N]") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{flag} {device}: no CUDA device here; use --device cpu")
    return device
