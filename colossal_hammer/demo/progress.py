"""What a long demo shows while it runs: one line per stage (elapsed, about how long is left) and the
progress bars of the commands it runs (train.py's tqdm bar on rank 0), relayed from their output."""

from __future__ import annotations

import codecs
import re
import sys
import time
from typing import Callable, Dict, List, Optional, TextIO

# tqdm's line: "train:  42%|████▏     | 42/100 [00:10<00:14,  4.1step/s, loss=5.1]". Only the bar is
# kept: another process's warning can land on the same line.
BAR = re.compile(r"^[\w .-]+:\s*\d+%\|[^|]*\|[^\[\n]*\[[^\]]*\]")


def minutes(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Stage lines with an estimate of what is left.

    `weights` are each stage's seconds in one measured run. The estimate is the remaining weights,
    scaled by how fast this run has gone so far (elapsed / weights done) once at least a tenth of
    the work is done; before that, the weights as measured."""

    def __init__(self, weights: Dict[str, float], out: TextIO = sys.stdout,
                 clock: Callable[[], float] = time.monotonic):
        self.weights = weights
        self.names: List[str] = list(weights)
        self.out = out
        self.clock = clock
        self.begin = clock()
        self.done: List[str] = []

    def left(self, elapsed: float) -> float:
        done = sum(self.weights[n] for n in self.done)
        total = sum(self.weights.values())
        speed = elapsed / done if done >= 0.1 * total else 1.0
        return (total - done) * speed

    def stage(self, name: str, what: str) -> None:
        """Announce `name` (a key of weights) as starting now; the one before it is done."""
        self.done = self.names[: self.names.index(name)]
        elapsed = self.clock() - self.begin
        print(f"\n== [{self.names.index(name) + 1}/{len(self.names)}] {name}: {what} "
              f"({minutes(elapsed)} elapsed, about {minutes(self.left(elapsed))} left)", file=self.out, flush=True)

    def finish(self) -> float:
        self.done = list(self.names)
        return self.clock() - self.begin


def relay(stream, out: TextIO = sys.stdout, tty: Optional[bool] = None, every: float = 30.0) -> str:
    """Read a command's merged output to its end and return it; show its progress bars as they come.

    On a terminal a bar redraws in place; elsewhere (a log file, a captured test) one bar line is
    written at most every `every` seconds, and the last one."""
    tty = out.isatty() if tty is None else tty
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    chunks, pending, last_bar, shown_at = [], "", None, None
    while True:
        data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not data:
            break
        text = decoder.decode(data)
        chunks.append(text)
        *segments, pending = re.split(r"[\r\n]", pending + text)
        for segment in segments:
            bar = BAR.match(segment)
            if not bar:
                continue
            segment = last_bar = bar.group(0)
            if tty:
                out.write("\r" + segment)
            elif shown_at is None or time.monotonic() - shown_at >= every:
                out.write(segment + "\n")
                shown_at = time.monotonic()
                last_bar = None
        out.flush()
    chunks.append(decoder.decode(b"", final=True))
    if tty and last_bar is not None:
        out.write("\n")
    elif last_bar is not None:
        out.write(last_bar + "\n")  # the final state, if not shown yet
    out.flush()
    return "".join(chunks)
