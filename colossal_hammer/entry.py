"""Console entry points, at the top of the package stack: the one place that may reach every tool."""

import sys


def train() -> None:
    """train.py and `colossal-hammer-train`: train, or with --plan print the planner's answer for the same flags
    (plus the cluster's) and start nothing."""
    if "--plan" in sys.argv[1:]:
        from .plan.cli import main as plan

        return plan(sys.argv[1:])
    from .training.cli import main

    main()
