"""Fixtures for the passthru.vmm tests: each test runs on SimHost and on LinuxHost.

``host`` is parametrised "sim" (the model, profile linux-6.18 like this machine's kernel) and
"linux" (the running kernel). Tests marked ``needs_kvm`` skip their linux variant when
/dev/kvm is absent or not accessible; memfd tests run on both always. ``assert_released``
checks that nothing the test made is still alive: on SimHost ``host.leaks() == []`` (kernel
objects and RAM), on LinuxHost no fd or mapping the host tracks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


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
