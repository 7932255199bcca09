"""The ``passthru`` pytest plugin: a ``passthru_check`` fixture (see passthru.testing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .testing import assert_scenario_holds


@pytest.fixture
def passthru_check() -> Callable[..., Any]:
    """Call with a @scenario function; fails the test with the shrunk trace."""
    return assert_scenario_holds
