"""Fixtures for the passthru.vmm tests: each test runs on SimHost and on LinuxHost.

``host`` is parametrised "sim" (the model, profile linux-6.18 like this machine's kernel) and
"linux" (the running kernel). Tests marked ``needs_kvm`` skip their linux variant when
/dev/kvm is absent or not accessible; memfd tests run on both always. ``assert_released``
checks that nothing the test made is still alive: on SimHost ``host.leaks() == []`` (kernel
objects and RAM), on LinuxHost no fd or mapping the host tracks.
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

KVM_NODE = "/dev/kvm"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_kvm: the linux variant needs /dev/kvm")
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
    if request.node.get_closest_marker("needs_kvm") is not None:
        if not os.path.exists(KVM_NODE):
            pytest.skip(f"{KVM_NODE} absent")
        if not os.access(KVM_NODE, os.R_OK | os.W_OK):
            pytest.skip(f"{KVM_NODE} not accessible")
    from passthru.host.linux import LinuxHost

    with LinuxHost() as h:
        yield h


def released(host: Any) -> list[str]:
    """What the host still holds for this test (empty when everything was closed)."""
    if hasattr(host, "leaks"):
        return list(host.leaks())
    return [f"fd {fd} open" for fd in sorted(host.open_fds)] + [
        f"mapping [{s:#x}, {e:#x})" for s, e in host.mappings
    ]


@pytest.fixture
def assert_released() -> Callable[[Any], None]:
    def check(host: Any) -> None:
        assert released(host) == []

    return check
