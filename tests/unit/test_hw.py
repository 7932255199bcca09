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


def test_allow_globs_admit_a_prefix():
    p = mem()
    ((s, _),) = p.alloc(0x1000, Owner("gmem", "tdx:private:td1", allow=("vcpu:td1.*",)))
    p.write(s, b"x", "vcpu:td1.0")
    p.write(s, b"y", "vcpu:td1.17")
    assert p.sched.violations == []
    p.write(s, b"z", "vcpu:td10")  # not a vCPU of td1
    assert "vcpu:td10 writes" in p.sched.violations[0].message
    assert p.read(s, 1, "vcpu:td1.3") == b"y"


def test_claimed_mmio_refuses_others_even_without_a_device():
    p = mem()
    bar = 1 << 30  # the MMIO window, no handler registered: plain contents
    p.claim_mmio(bar, bar + 0x1000, Owner("tdi:x", "fw:mmio", allow=("vcpu:vm1.*",)))
    p.write(bar, b"ok", "vcpu:vm1.0")
    assert p.sched.violations == []
    p.read(bar, 2, "cpu:qemu")
    assert "cpu:qemu reads MMIO [0x40000000, 0x40000002) owned by tdi:x (fw:mmio)" in \
        p.sched.violations[0].message
    p.release_mmio(bar, bar + 0x1000)
    assert p.read(bar, 2, "cpu:qemu") == b"ok" and len(p.sched.violations) == 1


def test_freeing_memory_the_firmware_holds_is_a_violation_and_leaks_only_that_part():
    p = mem()
    ((s, e),) = p.alloc(0x3000, Owner("gmem"))
    p.set_owner(s + 0x1000, s + 0x2000, Owner("gmem", "fw:private", allow=("vcpu:vm1.*",)))
    p.release(s, e)
    assert "while the secure firmware holds it (fw:private)" in p.sched.violations[0].message
    assert list(p.owners) == [(s + 0x1000, s + 0x2000, Owner("gmem", "fw:private",
                                                             ("vcpu:vm1.*",)))]
