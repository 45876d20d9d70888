"""Find input files and read their lines, compressed or not, with a record of where each came from."""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence

from ..errors import InputError

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute, for opening
    name: str  # as recorded in the manifest: "<input dir as given>/<path relative to it>"


def list_input_files(input_dirs: Sequence[str]) -> List[InputFile]:
    """Every *.jsonl[.gz|.zst] under the given folders, in a fixed order (never os.listdir's)."""
    files = []
    for input_dir in input_dirs:
        if not os.path.isdir(input_dir):
            raise InputError(f"{input_dir}: input folder does not exist")
        found = []
        for root, _, names in os.walk(input_dir):
            for name in names:
                if name.endswith(SUFFIXES):
                    path = os.path.join(root, name)
                    found.append(InputFile(os.path.abspath(path), os.path.join(input_dir, os.path.relpath(path, input_dir))))
        if not found:
            raise InputError(f"{input_dir}: no {', '.join('*' + s for s in SUFFIXES)} files in this folder")
        files.extend(found)
    # Sorted by content location, not by the order the folders were named or listed.
    return sorted(files, key=lambda f: f.path)


def read_texts(path: str, fields: Sequence[str] = ("text", "target")) -> List[str]:
    """Texts of a .txt file (one per line) or a .jsonl file (the first of `fields` a row has), blank lines skipped."""
    import json

    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if not path.endswith(".jsonl"):
                texts.append(line.rstrip("\n"))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: malformed JSON: {e.msg}") from None
            text = next((row[f] for f in fields if f in row), None) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text:
                raise InputError(f"{path}:{number}: expected a non-empty string field "
                                 + " or ".join(repr(f) for f in fields))
            texts.append(text)
    return texts


def open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline), blank lines included (they are counted)."""
    with open_binary(path) as f:
        for number, line in enumerate(f, start=1):
            yield number, line.rstrip(b"\r\n")
