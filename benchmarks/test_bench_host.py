"""pytest-benchmark versions of bench_host.py: ``pytest benchmarks --benchmark-only``.

Not part of the test run (pyproject's testpaths is tests/). Each benchmark runs on SimHost
(``linux-6.18``) and on LinuxHost; the LinuxHost KVM variants skip when /dev/kvm is absent. One
benchmark round is one whole sequence; ``extra_info["calls"]`` gives the syscalls per round, so
us/call = mean / calls. The real kernel's scale cases stop at 64 GiB and fallocate only what
fits in RAM: the 1 TiB memslot (seconds) is left to bench_host.py, which runs it in a child
process under a time limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bench_host import (
    GiB,
    MiB,
    TiB,
    fmt_size,
    kvm_sequence,
    kvm_unavailable,
    mem_available,
    memfd_sequence,
    open_host,
    open_kvm,
    scale_once,
)

HOSTS = ["sim", pytest.param("linux", marks=pytest.mark.linux)]


def _host(kind: str, kvm: bool, big: bool = False) -> Iterator[Any]:
    if kind == "linux" and kvm and (why := kvm_unavailable()):
        pytest.skip(why)
    with open_host(kind, big=big) as h:
        yield h


@pytest.fixture(params=HOSTS)
def host(request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from _host(request.param, kvm=False)


@pytest.fixture(params=HOSTS)
def kvm_host(request: pytest.FixtureRequest) -> Iterator[tuple[Any, int]]:
    for h in _host(request.param, kvm=True):
        kfd = open_kvm(h)  # outside the timing, as in bench_host.py
        yield h, kfd
        h.close(kfd)


@pytest.fixture(params=HOSTS)
def big_kvm_host(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, int]]:
    for h in _host(request.param, kvm=True, big=True):
        yield request.param, h, open_kvm(h)


def test_kvm_sequence(benchmark: Any, kvm_host: tuple[Any, int]) -> None:
    h, kfd = kvm_host
    benchmark.extra_info["calls"] = kvm_sequence(h, kfd)
    benchmark(kvm_sequence, h, kfd)


def test_memfd_sequence(benchmark: Any, host: Any) -> None:
    benchmark.extra_info["calls"] = memfd_sequence(host)
    benchmark(memfd_sequence, host)


@pytest.mark.parametrize("size", [1 * MiB, 1 * GiB, 64 * GiB, 1 * TiB], ids=fmt_size)
def test_scale(benchmark: Any, big_kvm_host: tuple[str, Any, int], size: int) -> None:
    """guest_memfd + memslot of ``size``, fallocate and punch hole it, delete, close."""
    kind, h, kfd = big_kvm_host
    fallocate = True
    if kind == "linux":
        if size > 64 * GiB:
            pytest.skip("1 TiB memslot takes seconds on the real kernel: see bench_host.py")
        fallocate = size <= mem_available() // 8
    benchmark.extra_info["fallocate"] = fallocate
    rounds = 1 if kind == "linux" and size >= 64 * GiB else 5
    benchmark.pedantic(scale_once, args=(h, kfd, size, fallocate), rounds=rounds,
                       warmup_rounds=1)
