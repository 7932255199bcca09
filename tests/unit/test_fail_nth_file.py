"""/proc/thread-self/fail-nth on SimHost (kernel/fs/fail_nth.py): arming, counting down,
firing once, disarming, and the kstrtouint errors."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.uapi import linux as L

NODE = "/proc/thread-self/fail-nth"


def test_the_nth_fault_point_fails_once_and_the_count_reads_back() -> None:
    h = SimHost()
    fd = h.open(NODE, L.O_RDWR)
    assert h.pread(fd, 16, 0) == b"0\n"
    h.pwrite(fd, b"2", 0)
    assert h.pread(fd, 16, 0) == b"2\n"
    s = h.sched
    assert s.fault("a") is False
    assert h.pread(fd, 16, 0) == b"1\n"
    assert s.fault("b") is True  # the second point from arming
    assert s.fault("c") is False
    assert h.pread(fd, 16, 0) == b"0\n"
    h.pwrite(fd, b"0x1", 0)
    h.pwrite(fd, b"0", 0)  # disarmed before it fired
    assert s.fault("d") is False and h.pread(fd, 16, 0) == b"0\n"


@pytest.mark.parametrize("bad", [b"x", b"-1", b"4294967296", b""])
def test_not_an_unsigned_int_is_einval_and_changes_nothing(bad: bytes) -> None:
    h = SimHost()
    fd = h.open(NODE, L.O_RDWR)
    h.pwrite(fd, b"5", 0)
    with pytest.raises(OSError) as e:
        h.pwrite(fd, bad, 0)
    assert e.value.errno == errno.EINVAL and "kstrtouint" in str(e.value)
    assert h.pread(fd, 16, 0) == b"5\n"
