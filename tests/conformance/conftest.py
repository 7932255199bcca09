"""Fixtures for the conformance tests: every test runs on SimHost and on LinuxHost.

The ``host`` fixture (and the ``node(...)`` marker that skips the linux variant where a device
node is absent) lives in tests/conftest.py, shared with tests/vmm. ``child`` runs a probe in a
forked child, for SIGBUS cases on LinuxHost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ._probe import ChildResult, run_in_child


@pytest.fixture
def child() -> Callable[[Callable[[], Any]], ChildResult]:
    """Run a probe in a forked child; returns how it ended (signal number or exit code)."""
    return run_in_child
