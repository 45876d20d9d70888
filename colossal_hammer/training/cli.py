"""Console entry point: `colossal-hammer-train` is `train.py` installed on the PATH."""

from .config import parse_config
from .loop import run


def main() -> None:
    run(parse_config())


if __name__ == "__main__":
    main()
