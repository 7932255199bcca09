"""The IOMMU as hardware (hw/iommu.py): IO page tables as extents, DMA through domains, the
IOTLB, nesting, PASIDs and dirty tracking. Model-only: the kernel has no interface that lets a
test issue device DMA or read an IOMMU's tables."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.hw.iommu import (
    IOMMU_MMIO,
    IOMMU_READ,
    IOMMU_WRITE,
    Iommu,
    IommuDomain,
    IoPageTable,
)
from passthru.hw.physmem import Owner
from passthru.sim import Scheduler, track

GiB = 1 << 30
PAGE = 4096
RW = IOMMU_READ | IOMMU_WRITE


def unit(log: bool = True) -> tuple[SimHost, Iommu]:
    h = SimHost(log=log)
    return h, Iommu(h.kernel.sched, h.kernel.phys, "dmar0")


def ram(h: SimHost, size: int, owner: str = "buf") -> int:
    ((s, e),) = h.kernel.phys.alloc(size, Owner(owner))
    assert e - s == size
    return s


def events(h: SimHost, name: str) -> list[dict]:
    return [dict(e.args) for e in h.kernel.sched.log.events
            if e.subsystem == "iommu" and e.event == name]


def kinds(h: SimHost) -> list[str]:
    return [v.kind for v in h.kernel.sched.violations]


# ----- the page table: extents, never pages ---------------------------------------------


def test_one_gib_is_one_extent_and_half_unmap_leaves_one():
    t = IoPageTable(PAGE, "t")
    t.map(0x4000_0000, 0x1_0000_0000, GiB, RW)
    assert len(t) == 1
    assert t.lookup(0x4000_0000 + 0x1234) == (0x1_0000_1234, RW)
    assert t.unmap(0x4000_0000, GiB // 2) == GiB // 2
    assert len(t) == 1
    assert t.iova_to_phys(0x4000_0000) is None
    assert t.iova_to_phys(0x6000_0000) == 0x1_2000_0000


def test_map_overlap_and_misalignment_are_value_errors():
    t = IoPageTable(PAGE, "t")
    t.map(0x10000, 0x20000, 0x2000, RW)
    with pytest.raises(ValueError, match="already"):
        t.map(0x11000, 0x90000, 0x2000, RW)
    with pytest.raises(ValueError, match="aligned"):
        t.map(0x20800, 0x30000, PAGE, RW)
    assert t.mapped(0, 1 << 40) == [(0x10000, 0x12000, 0x20000, RW)]


def test_unmap_with_holes_counts_mapped_bytes_and_mapped_clips():
    t = IoPageTable(PAGE, "t")
    t.map(0x0, 0x100000, 0x2000, IOMMU_READ)
    t.map(0x4000, 0x200000, 0x2000, RW)
    assert len(t) == 2  # different prot and discontiguous: no merge
    assert t.mapped(0x1000, 0x5000) == [(0x1000, 0x2000, 0x101000, IOMMU_READ),
                                        (0x4000, 0x5000, 0x200000, RW)]
    assert t.unmap(0x0, 0x8000) == 0x4000
    assert len(t) == 0


def test_adjacent_maps_that_continue_merge():
    t = IoPageTable(PAGE, "t")
    t.map(0x0, 0x100000, 0x1000, RW)
    t.map(0x1000, 0x101000, 0x1000, RW)
    t.map(0x2000, 0x900000, 0x1000, RW)  # not physically contiguous
    assert len(t) == 2


def test_leaf_ptes_split_each_map_call_into_the_largest_aligned_pages():
    t = IoPageTable(PAGE, "t")
    every = (1 << 48) - PAGE  # every power of two from PAGE
    t.map(0x10000, 0x40000, 0x7000, RW)  # 16 KiB + 8 KiB + 4 KiB
    assert [t.leaf(a, every) for a in (0x10000, 0x13FFF, 0x14000, 0x16000)] == [
        (0x10000, 0x14000), (0x10000, 0x14000), (0x14000, 0x16000), (0x16000, 0x17000)]
    assert t.leaf(0x12000, PAGE | 2 * PAGE) == (0x12000, 0x14000)  # only the sizes given
    t.map(0x17000, 0x47000, 0x9000, RW)  # continues the first: one extent, two calls
    assert len(t) == 1
    assert t.leaf(0x18000, every) == (0x18000, 0x20000)  # not across the calls' border
    t.map(0x40000, 0x81000, 0x8000, RW)  # IOVA and physical address disagree: 4 KiB
    assert t.leaf(0x44000, every) == (0x44000, 0x45000)
    t.map(0x80000, 0x100000, 0x8000, RW, step=PAGE)  # PAGE_SIZE calls
    assert t.leaf(0x84000, every) == (0x84000, 0x85000)
    assert t.leaf(0x90000, every) is None
    t.unmap(0x10000, 0x4000)
    assert t.leaf(0x14000, every) == (0x14000, 0x16000)


def test_map_pages_errors_carry_the_kernels_errno():
    h, u = unit()
    d = u.domain(aperture=(0, 0xFFFF_FFFF))
    with pytest.raises(OSError) as e:
        d.map_pages(0x800, 0x1000, PAGE, RW)
    assert e.value.errno == errno.EINVAL and "unaligned" in str(e.value)
    with pytest.raises(OSError) as e:
        d.map_pages(0xFFFF_F000, 0x1000, 2 * PAGE, RW)
    assert e.value.errno == errno.EINVAL and "aperture" in str(e.value)
    d.map_pages(0x1000, 0x1000, PAGE, RW)
    with pytest.raises(OSError) as e:
        d.map_pages(0x1000, 0x5000, PAGE, RW)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        u.blocked.map_pages(0x1000, 0x1000, PAGE, RW)
    assert e.value.errno == errno.EINVAL
    assert len(d.table or ()) == 1


def test_selftest_mock_page_size_from_bitmap():
    h, u = unit()
    d = u.domain(pgsize_bitmap=2048 | 4096 | (1 << 21))
    assert d.pgsize == 2048
    d.map_pages(0x800, 0x800, 0x800, RW)  # 2 KiB aligned is fine here
    assert d.iova_to_phys(0x900) == 0x900


# ----- DMA through a domain into physical truth ------------------------------------------


def test_dma_write_then_read_reaches_physical_memory():
    h, u = unit()
    pa = ram(h, 0x4000)
    d = u.domain()
    d.map_pages(0x10_0000, pa, 0x4000, RW)
    u.attach("nic", d)
    assert u.domain_of("nic") is d
    assert u.dma("nic", 0x10_1ff0, 0x20, True, b"x" * 0x20) == b""
    assert h.kernel.phys.read(pa + 0x1ff0, 0x20, "cpu") == b"x" * 0x20
    assert u.dma("nic", 0x10_1ff0, 0x20, False) == b"x" * 0x20
    assert kinds(h) == []
    assert len(d.iotlb) == 1  # one cached extent per access, never per page
    assert events(h, "dma")[0] == {"dev": "nic", "iova": 0x10_1ff0, "n": 0x20, "write": True}
    assert events(h, "attach") == [{"dev": "nic", "pasid": None, "domain": d.name}]


def test_miss_permission_and_blocked_are_logged_faults():
    h, u = unit()
    pa = ram(h, PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, PAGE, IOMMU_READ)
    u.attach("nic", d)
    assert u.dma("nic", 0x5000, 4, False) is None
    assert u.dma("nic", 0x0, 4, True, b"abcd") is None
    assert h.kernel.phys.read(pa, 4, "cpu") == bytes(4)  # the write was dropped
    u.attach("nic", None)
    assert u.domain_of("nic") is u.blocked
    assert u.dma("nic", 0x0, 4, False) is None
    assert u.dma("gpu", 0x0, 4, False) is None  # never attached: no context entry
    reasons = [(f["dev"], f["reason"]) for f in events(h, "fault")]
    assert reasons == [("nic", "not present"), ("nic", "permission (write)"),
                       ("nic", "blocked"), ("gpu", "no context entry")]
    assert events(h, "detach") == [{"dev": "nic", "pasid": None, "domain": "-"}]
    assert kinds(h) == []  # faults are events, not violations, unless DMA must succeed


def test_fault_where_dma_must_succeed_is_a_violation():
    h, u = unit()
    u.attach("nic", u.domain())
    assert u.dma("nic", 0x7000, 8, False, expect_ok=True) is None
    assert kinds(h) == ["iommu-fault"]
    assert "0x7000" in h.kernel.sched.violations[0].message


def test_dma_spanning_two_extents_and_a_hole_faults_whole():
    h, u = unit()
    a, b = ram(h, PAGE, "a"), ram(h, PAGE, "b")
    d = u.domain()
    d.map_pages(0x0, b, PAGE, RW)
    d.map_pages(0x1000, a, PAGE, RW)
    u.attach("nic", d)
    assert u.dma("nic", 0xffe, 4, True, b"1234") == b""
    assert h.kernel.phys.read(b + 0xffe, 2, "cpu") == b"12"
    assert h.kernel.phys.read(a, 2, "cpu") == b"34"
    assert u.dma("nic", 0x1ffe, 4, True, b"5678") is None  # runs into the hole at 0x2000
    assert h.kernel.phys.read(a + 0xffe, 2, "cpu") == bytes(2)  # nothing transferred
    assert events(h, "fault")[0]["at"] == "0x2000"


def test_identity_domain_passes_iova_through():
    h, u = unit()
    pa = ram(h, PAGE)
    u.attach("nic", u.identity)
    u.dma("nic", pa, 3, True, b"abc")
    assert h.kernel.phys.read(pa, 3, "cpu") == b"abc"


def test_mmio_mapping_reaches_a_bar():
    h, u = unit()
    bar = 3 * GiB + 0x10_0000  # inside the default machine's PCI window
    d = u.domain()
    d.map_pages(0x8000_0000, bar, PAGE, RW | IOMMU_MMIO)
    u.attach("peer", d)
    assert u.dma("peer", 0x8000_0010, 4, True, b"ring") == b""
    assert u.dma("peer", 0x8000_0010, 4, False) == b"ring"
    assert kinds(h) == []


def test_msi_window_write_is_an_interrupt_not_memory():
    h, u = unit()
    u.attach("nic", u.domain())
    assert u.dma("nic", 0xFEE0_0000, 4, True, b"\x01\x00\x00\x00") == b""
    assert events(h, "msi") == [{"dev": "nic", "addr": 0xFEE0_0000}]
    assert events(h, "fault") == []


def test_dma_into_freed_memory_is_a_physical_violation():
    h, u = unit()
    pa = ram(h, PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, PAGE, RW)
    u.attach("nic", d)
    h.kernel.phys.release(pa, pa + PAGE)  # the owner frees it while still mapped
    assert u.dma("nic", 0x0, 4, True, b"boom") == b""  # the IOMMU lets it through
    assert kinds(h) == ["physical"]
    assert "dma:nic writes freed memory" in h.kernel.sched.violations[0].message


# ----- the IOTLB ---------------------------------------------------------------------------


def test_unmap_without_sync_is_served_stale_and_is_a_violation():
    h, u = unit()
    pa = ram(h, 2 * PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, 2 * PAGE, RW)
    u.attach("nic", d)
    assert u.dma("nic", 0x0, 2 * PAGE, False) == bytes(2 * PAGE)  # fills the IOTLB
    assert d.unmap_pages(0x0, 2 * PAGE) == 2 * PAGE
    assert u.dma("nic", 0x1000, 4, True, b"late") == b""  # hardware serves the stale entry
    assert h.kernel.phys.read(pa + 0x1000, 4, "cpu") == b"late"
    assert kinds(h) == ["stale-iotlb"]
    assert "without an IOTLB invalidation" in h.kernel.sched.violations[0].message


def test_unmap_then_sync_faults_and_is_no_violation():
    h, u = unit()
    pa = ram(h, PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, PAGE, RW)
    u.attach("nic", d)
    u.dma("nic", 0x0, 4, False)
    d.unmap_pages(0x0, PAGE)
    d.iotlb_sync(0x0, PAGE)
    assert len(d.iotlb) == 0
    assert u.dma("nic", 0x0, 4, True, b"late") is None
    assert kinds(h) == []
    assert [f["reason"] for f in events(h, "fault")] == ["not present"]


def test_remap_to_another_page_without_sync_is_stale():
    h, u = unit()
    a, b = ram(h, PAGE, "a"), ram(h, PAGE, "b")
    d = u.domain()
    d.map_pages(0x0, a, PAGE, RW)
    u.attach("nic", d)
    u.dma("nic", 0x0, 4, False)
    d.unmap_pages(0x0, PAGE)
    d.map_pages(0x0, b, PAGE, RW)
    u.dma("nic", 0x0, 4, True, b"oops")
    assert h.kernel.phys.read(a, 4, "cpu") == b"oops"  # went to the old page
    assert kinds(h) == ["stale-iotlb"]
    assert f"now maps to {b:#x}" in h.kernel.sched.violations[0].message


# ----- nesting -----------------------------------------------------------------------------


def nested(h: SimHost, u: Iommu) -> tuple[IommuDomain, IommuDomain, int]:
    pa = ram(h, 4 * PAGE)
    s2 = u.domain(nest_parent=True)
    s2.map_pages(0x8000_0000, pa, 4 * PAGE, RW)  # IPA -> PA
    s1 = u.domain("nested", parent=s2)
    s1.s1.set(0x1000, 0x3000, 0x8000_1000)  # IOVA -> IPA (the guest's table)
    return s1, s2, pa


def test_nested_translates_stage1_then_stage2():
    h, u = unit()
    s1, s2, pa = nested(h, u)
    u.attach("vf", s1)
    assert u.dma("vf", 0x1ffe, 4, True, b"nest") == b""
    assert h.kernel.phys.read(pa + 0x1ffe, 4, "cpu") == b"nest"
    assert s1.pgsize == s2.pgsize and kinds(h) == []


def test_nested_faults_name_the_stage():
    h, u = unit()
    s1, s2, pa = nested(h, u)
    s1.s1.set(0x5000, 0x6000, 0x9000_0000)  # an IPA stage 2 does not map
    u.attach("vf", s1)
    assert u.dma("vf", 0x4000, 4, False) is None
    assert u.dma("vf", 0x5000, 4, False) is None
    reasons = [f["reason"] for f in events(h, "fault")]
    assert reasons == ["stage-1: not present", "stage-2: IPA 0x90000000 not present"]


def test_nested_needs_a_nest_parent_and_cannot_map():
    h, u = unit()
    with pytest.raises(OSError) as e:
        u.domain("nested", parent=u.domain())
    assert e.value.errno == errno.EINVAL
    s1, _, _ = nested(h, u)
    with pytest.raises(OSError, match="not paging"):
        s1.map_pages(0x0, 0x0, PAGE, RW)


def test_stage2_unmap_and_sync_flushes_nested_entries():
    h, u = unit()
    s1, s2, pa = nested(h, u)
    u.attach("vf", s1)
    u.dma("vf", 0x1000, 4, False)
    assert len(s1.iotlb) == 1
    s2.unmap_pages(0x8000_0000, 4 * PAGE)
    u.dma("vf", 0x1000, 4, False)  # stale: stage 2 no longer maps the IPA
    assert kinds(h) == ["stale-iotlb"]
    s2.iotlb_sync(0x8000_0000, 4 * PAGE)
    assert len(s1.iotlb) == 0
    assert u.dma("vf", 0x1000, 4, False) is None


# ----- PASID -------------------------------------------------------------------------------


def test_pasid_attach_selects_its_own_domain_and_detach_clears_it():
    h, u = unit()
    a, b = ram(h, PAGE, "a"), ram(h, PAGE, "b")
    rid, sva = u.domain(), u.domain()
    rid.map_pages(0x0, a, PAGE, RW)
    sva.map_pages(0x0, b, PAGE, RW)
    u.attach("acc", rid)
    u.attach("acc", sva, pasid=7)
    assert u.domain_of("acc", 7) is sva and u.domain_of("acc") is rid
    u.dma("acc", 0x0, 1, True, b"R")
    u.dma("acc", 0x0, 1, True, b"P", pasid=7)
    assert h.kernel.phys.read(a, 1, "cpu") == b"R"
    assert h.kernel.phys.read(b, 1, "cpu") == b"P"
    u.attach("acc", None, pasid=7)
    assert u.domain_of("acc", 7) is None
    assert u.dma("acc", 0x0, 1, False, pasid=7) is None
    assert events(h, "fault")[-1]["reason"] == "no PASID entry"
    assert events(h, "fault")[-1]["pasid"] == 7
    assert u.dma("acc", 0x0, 1, False) == b"R"  # the RID's domain is untouched


# ----- dirty tracking ----------------------------------------------------------------------


def test_dirty_tracking_marks_written_extents_and_read_clears():
    h, u = unit()
    pa = ram(h, 16 * PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, 16 * PAGE, RW)
    u.attach("nic", d)
    u.dma("nic", 0x0, 4, True, b"pre!")  # before tracking: not recorded
    d.set_dirty_tracking(True)
    assert d.dirty_tracking
    u.dma("nic", 0x2000, 2 * PAGE, True, bytes(2 * PAGE))
    u.dma("nic", 0x8000, 4, False)  # a read dirties nothing
    u.dma("nic", 0x9000, 8, True, b"12345678")
    assert d.read_and_clear_dirty(0x0, 16 * PAGE) == [(0x2000, 0x4000), (0x9000, 0x9008)]
    assert d.read_and_clear_dirty(0x0, 16 * PAGE) == []
    d.set_dirty_tracking(False)
    u.dma("nic", 0x9000, 8, True, b"12345678")
    assert d.read_and_clear_dirty(0x0, 16 * PAGE) == []


def test_nested_dma_dirties_the_stage2_in_ipa():
    h, u = unit()
    s1, s2, _ = nested(h, u)
    s2.set_dirty_tracking(True)
    u.attach("vf", s1)
    u.dma("vf", 0x1000, 16, True, bytes(16))
    assert s2.read_and_clear_dirty(0x8000_0000, 4 * PAGE) == [(0x8000_1000, 0x8000_1010)]


def test_stale_entry_in_a_faulting_dma_transfers_nothing_and_is_no_violation():
    h, u = unit()
    pa = ram(h, PAGE)
    d = u.domain()
    d.map_pages(0x0, pa, PAGE, RW)
    u.attach("nic", d)
    u.dma("nic", 0x0, 4, False)
    d.unmap_pages(0x0, PAGE)
    assert u.dma("nic", 0xffc, 8, True, b"12345678") is None  # runs past the entry
    assert kinds(h) == [] and h.kernel.phys.read(pa + 0xffc, 4, "cpu") == bytes(4)


# ----- what the checker sees -----------------------------------------------------------------


def test_dma_and_unmap_footprints_conflict_and_do_not_race():
    """The device's walk and the driver's unmap touch the same page-table range (so the
    explorer orders them), as marked hardware accesses (never a data race)."""
    s = Scheduler(track=True, log=True)
    assert s.tracker is not None
    s.tracker.activate()
    try:
        h = SimHost(sched=s)
        u = Iommu(s, h.kernel.phys, "dmar0")
        pa = ram(h, 2 * PAGE)
        d = u.domain()
        d.map_pages(0x0, pa, 2 * PAGE, RW)
        u.attach("nic", d)
        s.spawn("dev", lambda: u.dma("nic", 0x0, 8, True, b"12345678"))
        s.spawn("drv", lambda: d.unmap_pages(0x0, PAGE))
        s.run()
    finally:
        s.tracker.deactivate()
    assert d.table is not None
    ptes = d.table.ptes._uid
    dev, drv = ({ptes: fp[ptes]} for fp in s.step_fps if ptes in fp)
    assert track.conflict(dev, drv)
    assert kinds(h) == []


def test_dma_through_a_freed_domain_is_a_use_after_free() -> None:
    """A domain freed while a PASID entry still points at it: the DMA reports the walk of
    freed tables and transfers nothing; freed after the entry is cleared, the DMA faults."""
    h = SimHost(log=True)
    k = h.kernel
    iommu = Iommu(k.sched, k.phys, "dmar9")
    parent = iommu.domain("paging", nest_parent=True)
    nested = iommu.domain("nested", parent=parent)
    iommu.attach("devU", nested, pasid=5)
    nested.free()
    assert iommu.dma("devU", 0x1000, 8, False, pasid=5) is None
    assert [v.kind for v in k.sched.violations] == ["iommu-domain-uaf"]
    iommu2 = Iommu(k.sched, k.phys, "dmar10")
    d2 = iommu2.domain("paging")
    iommu2.attach("devV", d2, pasid=1)
    iommu2.attach("devV", None, pasid=1)
    d2.free()
    assert iommu2.dma("devV", 0x1000, 8, False, pasid=1) is None
    assert len(k.sched.violations) == 1  # a fault (no PASID entry), not a second UAF
