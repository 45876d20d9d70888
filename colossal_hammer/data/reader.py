"""Find input files and read their lines, compressed or not, with a record of where each came from."""

from __future__ import annotations

import gzip
import io
import os
import sys
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

from ..errors import InputError

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


@dataclass(frozen=True)
class InputFile:
    path: str  # real path (symbolic links resolved), for opening and as the file's identity
    name: str  # as recorded in the manifest: "<input dir as given>/<path relative to it>"


def list_input_files(input_dirs: Sequence[str]) -> List[InputFile]:
    """Every *.jsonl[.gz|.zst] under the given folders, each once, in a fixed order (never os.listdir's).

    A file is identified by its real path, so one reached twice (a folder named twice, a folder and its
    parent, a symbolic link) is read once; its name is the smallest of the names that reached it, so the
    manifest does not depend on the order the folders were named in. A note line says what was merged."""
    by_path = {}
    for input_dir in input_dirs:
        if not os.path.isdir(input_dir):
            raise InputError(f"{input_dir}: input folder does not exist")
        found = 0
        for root, _, names in os.walk(input_dir):
            for name in names:
                if name.endswith(SUFFIXES):
                    path = os.path.join(root, name)
                    by_path.setdefault(os.path.realpath(path), []).append(
                        os.path.join(input_dir, os.path.relpath(path, input_dir)))
                    found += 1
        if not found:
            raise InputError(f"{input_dir}: no {', '.join('*' + s for s in SUFFIXES)} files in this folder")
    reached_twice = sum(len(names) > 1 for names in by_path.values())
    if reached_twice:
        names = next(n for n in by_path.values() if len(n) > 1)
        print(f"note: {reached_twice:,} input file{'s were' if reached_twice > 1 else ' was'} reached more than once "
              f"(e.g. {min(names)}, {len(names)} times: a folder named twice, a folder with its parent, or a link); "
              f"each is read once", file=sys.stderr)
    # Sorted by content location, not by the order the folders were named or listed.
    return [InputFile(path, min(names)) for path, names in sorted(by_path.items())]


def read_documents(path: str, fields: Sequence[str] = ("text", "target"),
                   category_field: str = "category") -> List[Tuple[str, str]]:
    """(category, text) of each document in a .txt file (one per line, category = file name) or a .jsonl
    file, compressed or not (the first of `fields` a row has; `category_field` when present, else the file
    name). Blank lines are skipped; anything else that is not a document is one `error:` line."""
    from .records import RecordProblem, load_object, string_field

    default_category = os.path.basename(path)
    jsonl = path.endswith(SUFFIXES)
    docs = []
    for number, raw in iter_lines(path, path):
        if not raw.strip():
            continue
        try:
            if not jsonl:
                docs.append((default_category, _decode(raw)))
                continue
            obj = load_object(raw)
            field = next((f for f in fields if f in obj), fields[0])
            text = string_field(obj, field)
            if not text.strip():
                raise RecordProblem("empty_text", f"field '{field}' is empty")
            docs.append((string_field(obj, category_field, default_category), text))
        except RecordProblem as p:
            raise InputError(f"{path}:{number}: {p.detail}") from None
    return docs


def read_texts(path: str, fields: Sequence[str] = ("text", "target")) -> List[str]:
    """Texts of a .txt file (one per line) or a .jsonl file (the first of `fields` a row has), blank lines skipped."""
    return [text for _, text in read_documents(path, fields)]


def _decode(raw: bytes) -> str:
    from .records import INVALID_UTF8, RecordProblem

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordProblem(INVALID_UTF8, f"invalid UTF-8 at byte {e.start}; convert the file to UTF-8") from None


def open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 16)
    return open(path, "rb")


class _ZstdReader(io.RawIOBase):
    """Every frame of a .zst file, decompressed. A file that ends inside a frame raises EOFError, as gzip
    does: zstandard's own stream_reader just stops there, and the lines after the cut vanish unseen."""

    def __init__(self, path: str):
        import zstandard

        self._new = zstandard.ZstdDecompressor().decompressobj
        self._raw = open(path, "rb")
        self._obj = self._new()
        self._in_frame = False  # part of a frame was fed and its end not yet seen
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._out):
            chunk = self._raw.read(1 << 16)  # small reads bound memory, whatever the compression ratio
            if not chunk:
                if self._in_frame:
                    raise EOFError("the zstd stream ends inside a frame")
                return 0
            out = []
            while chunk:
                self._in_frame = True
                out.append(self._obj.decompress(chunk))
                chunk = b""
                if self._obj.eof:  # a frame ended: what follows belongs to the next one
                    chunk, self._obj, self._in_frame = self._obj.unused_data, self._new(), False
            self._out, self._pos = b"".join(out), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos: self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def iter_lines(path: str, name: str = "") -> Iterator[Tuple[int, bytes]]:
    """(1-based line number, raw bytes without the newline), blank lines included (they are counted).

    A file that cannot be read to its end (truncated or corrupt compression, an I/O error) is one
    `error: NAME: ...` line, never a traceback from the decompressor."""
    number = 0
    try:
        with open_binary(path) as f:
            for number, line in enumerate(f, start=1):
                yield number, line.rstrip(b"\r\n")
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{name or path}: {_read_failure(e, number)}") from None
    except Exception as e:  # noqa: BLE001 - zstandard raises its own ZstdError, not an OSError
        if type(e).__name__ != "ZstdError":
            raise
        raise InputError(f"{name or path}: corrupt zstd data ({e}) after {number} lines read; "
                         f"re-download or re-compress the file") from None


def _read_failure(e: BaseException, lines_read: int) -> str:
    fix = f"after {lines_read} lines read; re-download or re-compress the file"
    if isinstance(e, EOFError):
        return f"truncated: the compressed stream ends early, {fix}"
    if isinstance(e, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt gzip data ({e}) {fix}"
    return f"cannot be read: {getattr(e, 'strerror', None) or e}"
