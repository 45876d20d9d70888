#!/usr/bin/env python3
"""Continual pretraining / SFT of Llama-family models on Colossal-AI Booster plugins.

Launch with `torchrun --nproc_per_node N train.py ...` or `colossalai run --nproc_per_node N train.py ...`.
Every flag is listed by `python train.py --help`.
"""

from colossal_hammer.entry import train

if __name__ == "__main__":
    train()
