"""`python -m colossal_hammer.plan` (and `train.py --plan`): does this run fit that cluster, how fast, what to change."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from ..errors import InputError, run_cli
from . import devices, report
from .config import parse
from .search import cluster_of, evaluate, search, shape_problem, smallest_change
from .shapes import load_shape


def plan_dict(argv: Optional[List[str]] = None) -> dict:
    cfg = parse(argv)
    shape = load_shape(cfg)
    problem = shape_problem(cfg, shape)
    if problem:
        raise InputError(f"{problem}")
    cluster = cluster_of(cfg, devices.resolve(cfg.gpu, cfg.gpu_memory_gb, cfg.peak_tflops))
    plan = evaluate(cfg, shape, cluster)
    change = None
    if not plan.fits:
        change = smallest_change(cfg, shape, cluster) or (None, None)
    found = search(cfg, shape, cluster)[: cfg.top] if cfg.search else None
    out = report.to_dict(plan, cluster, change, found)
    out["_json"] = cfg.json
    return out


def main(argv: Optional[List[str]] = None) -> None:
    """One `error:` line and status 2 for bad flags, as train.py."""
    out = run_cli(lambda: plan_dict(argv))
    as_json = out.pop("_json")
    try:
        print(json.dumps(out, indent=2) if as_json else report.text(out), flush=True)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()


if __name__ == "__main__":
    main()
