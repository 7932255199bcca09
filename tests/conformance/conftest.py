"""Fixtures for the conformance tests: every test runs on SimHost and on LinuxHost.

``host`` is parametrised "sim" (passthru.SimHost(), the model) and "linux" (LinuxHost, the
running kernel). A module or test marked ``@pytest.mark.node("/dev/kvm")`` skips its linux
variant when that device node is absent; tests that need no node (memfd) always run on both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import passthru  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from passthru.host.linux import LinuxHost  # noqa: E402

from ._probe import ChildResult, run_in_child  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "node(path, ...): the linux variant needs these device nodes"
    )
    config.addinivalue_line("markers", "linux: runs on the real kernel (LinuxHost)")


@pytest.fixture(
    params=[
        pytest.param("sim", id="sim"),
        pytest.param("linux", id="linux", marks=pytest.mark.linux),
    ]
)
def host(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "sim":
        from passthru import SimHost

        yield SimHost(profile="linux-6.18")  # this machine runs 6.18
        return
    for mark in request.node.iter_markers("node"):
        for path in mark.args:
            if not os.path.exists(path):
                pytest.skip(f"{path} absent")
            if not os.access(path, os.R_OK | os.W_OK):
                pytest.skip(f"{path} not accessible")
    with LinuxHost() as h:
        yield h


@pytest.fixture
def child() -> Callable[[Callable[[], Any]], ChildResult]:
    """Run a probe in a forked child; returns how it ended (signal number or exit code)."""
    return run_in_child
