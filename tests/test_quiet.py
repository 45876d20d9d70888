"""quiet: exactly bitsandbytes' kernels-community message is dropped, and only when asked."""

import logging
import os
import subprocess
import sys

from colossal_hammer import quiet
from tests.distributed import REPO


def test_only_the_known_message_is_dropped():
    logger = logging.getLogger(quiet.BNB_LOGGER)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        quiet.silence_known_noise()
        quiet.silence_known_noise()  # idempotent: one filter
        assert sum(isinstance(f, quiet.DropMessage) for f in logger.filters) == 1
        logger.warning(quiet.BNB_NOISE + ": %s. Please make sure...", "No module named 'kernels'")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else went wrong"]


def test_importing_colossalai_optimizers_is_quiet_once_silenced():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import colossalai.nn.optimizer"
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    silenced = subprocess.run([sys.executable, "-c", "from colossal_hammer.quiet import silence_known_noise; "
                               "silence_known_noise(); " + code], capture_output=True, text=True, env=env, check=True)
    assert quiet.BNB_NOISE not in silenced.stderr
    # on CPUs without AVX-512 BF16 bitsandbytes never tries the kernel, and there is nothing to silence
    if quiet.BNB_NOISE not in loud.stderr:
        import pytest

        pytest.skip("bitsandbytes does not print the message on this CPU")
