"""Console entry point: `colossal-hammer-train` is `train.py` installed on the PATH."""

import os
import sys

from .config import parse_config
from .loop import run


def main() -> None:
    """A refused run ends with one `error:` line (printed by rank 0 only, not once per process) and status 2."""
    try:
        run(parse_config())
    except SystemExit as e:
        if not isinstance(e.code, str):
            raise
        if os.environ.get("RANK", "0") == "0":
            print(e.code, file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
