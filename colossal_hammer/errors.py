"""User mistakes: one `error:` line naming file, line and field; exit status 2; no traceback."""

import sys


class InputError(Exception):
    """A user mistake: the message is one line naming file, line and field."""


def main_with_errors(fn) -> None:
    """Run a CLI body; an InputError becomes one `error:` line on stderr and exit status 2."""
    try:
        fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
