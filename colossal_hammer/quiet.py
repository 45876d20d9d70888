"""Silence known third-party noise that tells a user something is broken when nothing is.

bitsandbytes (imported by galore_torch, which colossalai.nn.optimizer imports) logs at WARNING,
on CPUs with AVX-512 BF16, "Failed to load CPU gemm_4bit_forward from kernels-community: No module
named 'kernels'..." from bitsandbytes/backends/cpu/ops.py. We never use 4-bit kernels, so exactly
that message is dropped; every other bitsandbytes message still shows. The message is logged while
bitsandbytes is being imported, so call `silence_known_noise()` before anything imports
colossalai.nn.optimizer, galore_torch or bitsandbytes: first thing in train.py's main.
"""

from __future__ import annotations

import logging

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"  # the module's logging.getLogger(__name__)
BNB_NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """Drops records whose format string starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Idempotent. The logger is looked up by name, so this works before bitsandbytes exists in sys.modules."""
    logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, DropMessage) and f.prefix == BNB_NOISE for f in logger.filters):
        logger.addFilter(DropMessage(BNB_NOISE))
