"""The ``passthru`` pytest plugin: a ``passthru_check`` fixture (see passthru.testing)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .testing import assert_scenario_holds


@pytest.fixture
def passthru_check(tmp_path: Path) -> Callable[..., Any]:
    """Call with a @scenario function; fails the test with the shrunk trace and saves the
    counterexample under the test's ``tmp_path`` (the message prints the replay command)."""
    return functools.partial(assert_scenario_holds, save_dir=tmp_path / "passthru")
