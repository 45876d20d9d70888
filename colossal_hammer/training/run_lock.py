"""One run owns a save_dir at a time: an OS lock that dies with the process that holds it.

A check of what the folder holds cannot tell a running run from a finished one: two `--resume auto`
launches (a scheduler's retry, a double click) would both pass it and overwrite each other's checkpoints
and metrics. flock is released by the kernel when its process ends, however it ends (SIGKILL, OOM, a node
lost), so a crashed run never leaves a stale lock behind. Rank 0 takes it; on NFS, Linux emulates flock
with byte-range locks, which the server arbitrates across nodes.
"""

from __future__ import annotations

import fcntl
import os
import socket

LOCK_FILE = ".run.lock"
_held = {}  # save_dir -> open file: the lock lives as long as this process


class SaveDirBusy(Exception):
    """Another live process holds the lock; the message says which."""


def hold(save_dir: str) -> None:
    """Take save_dir's lock for the rest of this process, or raise SaveDirBusy. Creates save_dir."""
    key = os.path.realpath(save_dir)
    if key in _held:
        return
    os.makedirs(save_dir, exist_ok=True)
    handle = open(os.path.join(save_dir, LOCK_FILE), "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise SaveDirBusy(owner) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    _held[key] = handle
