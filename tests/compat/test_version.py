"""The CPU layer names the Colossal-AI release its patches were written for, and refuses another."""

import pytest


def test_the_layer_refuses_a_colossalai_release_it_was_not_written_for():
    from colossal_hammer.compat.cpu_accelerator import PATCHED_VERSION, check_version
    from colossal_hammer.errors import InputError

    check_version(PATCHED_VERSION)
    with pytest.raises(InputError, match=f"patches Colossal-AI {PATCHED_VERSION}, and colossalai 0.5.1 is installed"):
        check_version("0.5.1")
