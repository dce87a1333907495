"""pytest setup: the package under test is python/altgrad (PYTHONPATH), over the
library named by $ALTGRAD_LIBRARY or found in the build tree."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def daemon():
    """A real altgradd on temporary ipc sockets and database (one per test
    module; tests use their own run names). Missing binary: the test fails."""
    from daemon_fixture import Daemon
    d = Daemon()
    try:
        d.start()
        yield d
    finally:
        d.stop()
