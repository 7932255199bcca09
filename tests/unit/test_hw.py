"""Physical truth: allocation as extents, owners, pins and violations."""

from __future__ import annotations

import errno

import pytest

from passthru.hw import Machine, Owner, PhysMem
from passthru.sim import Scheduler

GiB = 1 << 30


def mem(ram=((0, 1 << 20),)) -> PhysMem:
    return PhysMem(Scheduler(), Machine(ram=ram, mmio=((1 << 30, 2 << 30),)))


def test_alloc_is_zeroed_and_extent_based():
    p = mem(ram=((0, 64 * GiB),))
    got = p.alloc(32 * GiB, Owner("big"))
    assert got == [(0, 32 * GiB)]  # one extent for 32 GiB: nothing per page
    assert len(p.owners) == 1
    assert p.read(0x1234, 4, "cpu") == bytes(4)


def test_alloc_fails_with_enomem_and_changes_nothing():
    p = mem()
    with pytest.raises(OSError) as e:
        p.alloc(2 << 20, Owner("x"))
    assert e.value.errno == errno.ENOMEM
    assert p.allocated_bytes() == 0 and list(p.free) == [(0, 1 << 20, True)]


def test_access_to_freed_memory_is_a_violation_and_not_served():
    p = mem()
    ((s, e),) = p.alloc(0x1000, Owner("a"))
    p.write(s, b"secret", "cpu")
    p.release(s, e)
    assert p.read(s, 6, "dma:dev") == bytes(6)
    assert [v.kind for v in p.sched.violations] == ["physical"]
    assert "reads freed memory" in p.sched.violations[0].message


def test_private_memory_refuses_others():
    p = mem()
    ((s, e),) = p.alloc(0x1000, Owner("gmem", "private:vm1", allow=("vcpu:vm1",)))
    p.write(s, b"x", "vcpu:vm1")
    assert p.sched.violations == []
    p.write(s, b"y", "cpu:qemu")
    assert "owned by gmem (private:vm1)" in p.sched.violations[0].message
    assert p.read(s, 1, "vcpu:vm1") == b"x"  # the refused write was dropped


def test_unbacked_address_is_a_violation():
    p = mem()
    p.read(5 << 30, 4, "cpu")
    assert "unbacked" in p.sched.violations[0].message


def test_pinned_memory_outlives_its_owner_until_unpinned():
    p = mem()
    ((s, e),) = p.alloc(0x2000, Owner("a"))
    p.pin(s, s + 0x1000)
    p.release(s, e)
    assert p.allocated_bytes() == 0x1000  # the pinned page lingers as an orphan
    assert p.owner_of(s).state == "orphan"
    p.read(s, 4, "dma:dev")  # access through the pin is not a use-after-free
    assert p.sched.violations == []
    p.unpin(s, s + 0x1000)
    assert p.allocated_bytes() == 0
    assert list(p.free) == [(0, 1 << 20, True)]
