"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

A plain `LambdaLR`, so its state_dict is the step counter and nothing else, it works with any
optimizer wrapper a Booster returns, and a resumed run continues exactly where it stopped.
"""

import math

from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> LambdaLR:
    total_steps = max(1, total_steps)
    warmup_steps = max(0, min(warmup_steps, total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def default_warmup_steps(total_steps: int) -> int:
    """Colossal-LLaMA's default: 2.5% of the optimizer steps."""
    return int(0.025 * total_steps)
