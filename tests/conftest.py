"""Fixtures shared by every test folder that runs on both hosts.

``host`` is parametrised "sim" (passthru.SimHost with profile linux-6.18, like this machine's
kernel, or $PASSTHRU_SIM_PROFILE) and "linux" (LinuxHost, the running kernel). A test marked
``node(path, ...)`` (or ``needs_kvm``, short for ``node("/dev/kvm")``) skips its linux variant
when a node is absent or not accessible, naming the node; tests that need no node (memfd)
always run on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

KVM_NODE = "/dev/kvm"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node(path, ...): the linux variant needs these nodes")
    config.addinivalue_line("markers", "needs_kvm: the linux variant needs /dev/kvm")
    config.addinivalue_line("markers", "linux: runs on the real kernel (LinuxHost)")


def _needed_nodes(node: pytest.Item) -> list[str]:
    paths = [p for mark in node.iter_markers("node") for p in mark.args]
    if node.get_closest_marker("needs_kvm") is not None:
        paths.append(KVM_NODE)
    return paths


@pytest.fixture(
    params=[
        pytest.param("sim", id="sim"),
        pytest.param("linux", id="linux", marks=pytest.mark.linux),
    ]
)
def host(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "sim":
        from passthru import SimHost

        # This machine runs 6.18; the real-kernel lanes run the sim halves again with the
        # profile of their kernel (tests/lanes: PASSTHRU_SIM_PROFILE=linux-7.3).
        yield SimHost(profile=os.environ.get("PASSTHRU_SIM_PROFILE", "linux-6.18"))
        return
    for path in _needed_nodes(request.node):
        if not os.path.exists(path):
            pytest.skip(f"{path} absent")
        if not os.access(path, os.R_OK | os.W_OK):
            pytest.skip(f"{path} not accessible")
    from passthru.host.linux import LinuxHost

    with LinuxHost() as h:
        yield h
