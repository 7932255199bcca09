"""fail_nth over iommufd's ioctls, on both hosts (tools/testing/selftests/iommu/
iommufd_fail_nth.c): arm /proc/thread-self/fail-nth with N = 1, 2, ... right before one call
(the selftest's fail_nth_enable after set-up), until the call no longer reaches its Nth fault
point. Each call the injection failed must fail with an allocation errno, leave its IOVA
unmapped and nothing pinned (the selftest's teardown: MD_CHECK_REFS 0 after close), and the
same call must then succeed.

The real kernel counts every should_fail() of the task (failslab, fail_page_alloc with the
selftest's debugfs settings: ignore-gfp-wait N, verbose 0); the model counts its own fault
points (kernel/fs/fail_nth.py). So N is not compared, only the property, and that the sweep
injected at least one failure the call reported.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._iommufd import NODE, Iommufd, is_linux, mock_fixture_setup, raises
from ._probe import PAGE

FAIL_NTH = "/proc/thread-self/fail-nth"
DEBUGFS = "/sys/kernel/debug"
pytestmark = pytest.mark.node(NODE, f"{DEBUGFS}/failslab/ignore-gfp-wait")
IOVA = 1 << 24
LENGTH = 4 * PAGE
# What an injected failure comes back as: ENOMEM from an allocation, ENOENT from
# iommufd_get_object (main.c: iommufd_should_fail(), the fail_iommufd attribute of
# CONFIG_IOMMUFD_TEST), EFAULT from fail_usercopy / a failed
# copy_to_user of the result; ENOSPC: an ID allocator's -ENOMEM mapped by xa_alloc callers).
INJECTED = {errno.ENOMEM, errno.ENOENT, errno.EFAULT, errno.ENOSPC}
LIMIT = 1000  # the selftest's bound on iterations


def _knobs() -> dict[str, str]:
    """The selftest's setup_fault_injection: any allocation may fail, and quietly."""
    out = {"failslab/ignore-gfp-wait": "N", "fail_page_alloc/ignore-gfp-wait": "N",
           "fail_page_alloc/ignore-gfp-highmem": "N"}
    for d in sorted(os.listdir(DEBUGFS)):
        if d.startswith("fail") and os.path.exists(f"{DEBUGFS}/{d}/verbose"):
            out[f"{d}/verbose"] = "0"
    return out


@pytest.fixture
def injection(host: Any) -> Iterator[Any]:
    """The host with fault injection set up as the selftest does (LinuxHost: debugfs knobs,
    restored afterwards)."""
    if not is_linux(host):
        yield host
        return
    saved: dict[str, str] = {}
    try:
        for name, val in _knobs().items():
            with open(f"{DEBUGFS}/{name}") as f:
                saved[name] = f.read().strip()
            with open(f"{DEBUGFS}/{name}", "w") as f:
                f.write(val)
        yield host
    finally:
        for name, val in saved.items():
            with open(f"{DEBUGFS}/{name}", "w") as f:
                f.write(val)


def _pread_nth(host: Any, fd: int) -> int:
    try:
        return int(host.pread(fd, 32, 0).strip() or b"0")
    except OSError as e:  # the selftest: reading can itself be failed (EFAULT): it fired
        if e.errno != errno.EFAULT:
            raise
        return 1


def _disarm(host: Any, fd: int) -> None:
    try:
        host.pwrite(fd, b"0", 0)
    except OSError as e:  # the selftest: disarming can fail once too
        if e.errno != errno.EFAULT:
            raise
        host.pwrite(fd, b"0", 0)


def sweep(host: Any, setup: Callable[[], Any], call: Callable[[Any], None],
          check_failed: Callable[[Any], None], teardown: Callable[[Any], None],
          injected: frozenset[int] = frozenset(INJECTED)) -> list[int]:
    """The errnos of the calls an injection failed, N = 1 ... until the call passes its
    fault points untouched (then it must have succeeded)."""
    nth = host.open(FAIL_NTH, os.O_RDWR)
    errs: list[int] = []
    try:
        for n in range(1, LIMIT):
            ctx = setup()
            host.pwrite(nth, str(n).encode(), 0)
            err: OSError | None = None
            try:
                call(ctx)
            except OSError as e:
                err = e
            left = _pread_nth(host, nth)
            _disarm(host, nth)
            if err is not None:
                assert left == 0, f"N={n}: {err!r} without an injected failure"
                assert err.errno in injected, f"N={n}: {err!r}"
                errs.append(err.errno)
                check_failed(ctx)
                call(ctx)  # the same call, without injection, succeeds
            teardown(ctx)
            if left:
                assert err is None
                return errs
        raise AssertionError(f"the call still reached fault point N after {LIMIT} runs")
    finally:
        host.close(nth)


def _unmapped(c: Iommufd, ioas: int) -> None:
    raises(errno.ENOENT, c.ioas_unmap, ioas, IOVA, LENGTH)


def test_fail_nth_ioas_map_without_a_domain(injection: Any) -> None:
    host = injection

    def setup() -> tuple[Iommufd, int]:
        c = Iommufd(host)
        return c, c.ioas_alloc()

    errs = sweep(host, setup, lambda s: s[0].ioas_map(s[1], s[0].buffer, LENGTH, IOVA),
                 lambda s: _unmapped(*s), lambda s: s[0].teardown())
    assert errno.ENOMEM in errs


def test_fail_nth_ioas_map_into_a_mock_domain(injection: Any) -> None:
    host = injection

    def setup() -> tuple[Iommufd, int]:
        c = mock_fixture_setup(host)
        ioas = c.ioas_alloc()
        c.mock_domain(ioas)
        return c, ioas

    errs = sweep(host, setup, lambda s: s[0].ioas_map(s[1], s[0].buffer, LENGTH, IOVA),
                 lambda s: _unmapped(*s), lambda s: s[0].teardown())
    assert errno.ENOMEM in errs


def test_fail_nth_mock_domain_attach_over_a_mapped_ioas(injection: Any) -> None:
    host = injection

    def setup() -> tuple[Iommufd, int]:
        c = mock_fixture_setup(host)
        ioas = c.ioas_alloc()
        c.ioas_map(ioas, c.buffer, LENGTH, IOVA)
        return c, ioas

    def still_mapped_once(s: tuple[Iommufd, int]) -> None:
        c, ioas = s
        assert c.ioas_unmap(ioas, IOVA, LENGTH) == LENGTH  # the area survived the failure
        c.ioas_map(ioas, c.buffer, LENGTH, IOVA)

    # The mock device's creation (selftest.c mock_dev_create: device_add after a failed
    # kobject_add) turns some injected failures into EINVAL (seen on 7.3.4).
    errs = sweep(host, setup, lambda s: s[0].mock_domain(s[1]), still_mapped_once,
                 lambda s: s[0].teardown(), frozenset(INJECTED | {errno.EINVAL}))
    assert errno.ENOMEM in errs
