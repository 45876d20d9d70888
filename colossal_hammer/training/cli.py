"""train.py's training run (colossal_hammer/entry.py sends --plan to the planner first)."""

import os
import sys

from ..errors import InputError
from ..quiet import silence_known_noise
from .config import parse_config
from .loop import run


def single_process_defaults() -> None:
    """`python train.py ...` without a launcher is a one-process run: give it what torchrun would."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def main() -> None:
    """A refused run ends with one `error:` line (printed by rank 0 only, not once per process) and status 2."""
    single_process_defaults()
    silence_known_noise()
    code = 0
    try:
        run(parse_config())
    except InputError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr, flush=True)
        code = 2
    # Leave without running destructors (loop.run keeps its trainer alive for this): torch's gloo process group
    # can deadlock in its own (py-spy on runs that never ended after their last checkpoint: the main thread,
    # holding the GIL, frees DDP's reducer and joins the group's worker thread, which waits for the GIL to free
    # a finished collective's tensors). Every file is written and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
