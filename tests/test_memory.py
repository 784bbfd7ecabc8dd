"""The CLI's malloc tuning: on Linux/glibc it takes effect, elsewhere it is a harmless no-op."""

import sys

import pytest

from physical_adv.memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_is_accepted_by_glibc():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
