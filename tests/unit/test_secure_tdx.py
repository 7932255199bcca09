"""The TDX module as physical truth (hw/secure/tdx.py): private memory and the PAMT, the
Secure EPT's block/track/remove, TDIs and their TDISP relay, private MMIO, the trusted device
context table, trusted DMA — and the TDX Connect unbind order: every wrong order fails with
the module's status and changes nothing; the right one gives the MMIO back to the host.
Host CPU and normal-domain DMA to private pages and private MMIO are ``physical`` violations.
Model-only (no TDX machine here)."""

from __future__ import annotations

from typing import Any

import pytest
from secure_world import BAR0, BAR_SIZE, BDF, PAGE, GiB, MiB, World

from passthru.hw import Owner
from passthru.hw.secure.tdx import Pamt, TdxError, TdxModule
from passthru.hw.tdisp import TdiState
from passthru.sim import Scheduler

MMIO_GPA = 0x10_0000_0000


def status(call: Any, *a: Any, **kw: Any) -> str:
    with pytest.raises(TdxError) as e:
        call(*a, **kw)
    return e.value.status


def snapshot(w: World, tdx: TdxModule) -> tuple[object, ...]:
    """Everything a refused call must leave unchanged."""
    return (list(tdx.pamt), list(tdx.mmiomt), dict(tdx.tds),
            {k: list(v) for k, v in tdx.sept.items()}, dict(tdx.devifs), dict(tdx.dmar),
            list(w.phys.owners), list(w.phys.mmio_claims), w.tdi.tdi_state)


def td_with_memory(w: World, size: int = 64 * MiB, **kw: Any) -> tuple[TdxModule, int]:
    tdx = TdxModule(w.sched, w.phys, **kw)
    tdx.td_create("td1", hkid=1)
    pa, _ = w.ram(size, "gmem:td1")
    tdx.mem_page_aug("td1", 0, pa, size)
    tdx.mem_page_accept("td1", 0, size)
    return tdx, pa


def bound(w: World, run: bool = True, **kw: Any) -> tuple[TdxModule, int, tuple[int, int]]:
    """A TD with memory and the TDI bound: locked, MMIO mapped and accepted, DMAR entry, RUN."""
    tdx, pa = td_with_memory(w, **kw)
    meta = w.ram(3 * PAGE, "kernel:tdx-meta")
    tdx.devif_create(BDF, "td1", w.tdi, [meta])
    tdx.tdi_lock(BDF)
    tdx.mmio_map("td1", MMIO_GPA, BAR0, BAR_SIZE, BDF)
    tdx.mmio_accept("td1", MMIO_GPA, BAR_SIZE)
    tdx.dmar_add(BDF, "td1")
    if run:
        tdx.tdi_start(BDF)
    return tdx, pa, meta


def unmap_mmio(tdx: TdxModule) -> None:
    tdx.mmio_block("td1", MMIO_GPA, BAR_SIZE)
    tdx.mem_track("td1")
    tdx.mmio_unmap("td1", MMIO_GPA, BAR_SIZE)


def clear_dmar(tdx: TdxModule) -> None:
    tdx.dmar_block(BDF)
    tdx.dmar_remove(BDF)


# ----- private memory ------------------------------------------------------------------------


def test_aug_accept_one_gib_is_one_extent_everywhere():
    w = World()
    tdx, pa = td_with_memory(w, size=1 * GiB)
    assert list(tdx.pamt) == [(pa, pa + GiB, Pamt("PT_REG", "td1"))]
    assert len(tdx.sept["td1"]) == 1 and len(w.phys.owners) == 1
    (s, e, o), = w.phys.owners
    assert (e - s, o.state, o.owner) == (GiB, "tdx:private:td1", "gmem:td1")
    hit = tdx.translate("td1", 0x1234)
    assert hit is not None and hit[0] == pa + 0x1234 and hit[1].state == "mapped"
    assert tdx.owner(pa + GiB - 1) == Pamt("PT_REG", "td1") and tdx.invariant() is None


def test_the_td_reaches_its_memory_the_host_does_not():
    w = World()
    _, pa = td_with_memory(w)
    w.phys.write(pa, b"secret", "vcpu:td1.0")
    assert w.phys.read(pa, 6, "vcpu:td1.3") == b"secret" and w.violations() == []
    assert w.phys.read(pa, 6, "cpu:qemu") == bytes(6)  # refused: not served
    w.phys.write(pa + 8, b"x", "kernel")
    w.phys.read(pa, 1, "vcpu:td2.0")  # another VM's vCPU
    msgs = w.violations()
    assert len(msgs) == 3 and all(m.startswith("physical: ") for m in msgs)
    assert "cpu:qemu reads" in msgs[0] and "owned by gmem:td1 (tdx:private:td1)" in msgs[0]
    assert "kernel writes" in msgs[1] and "vcpu:td2.0 reads" in msgs[2]


def test_dma_through_a_normal_iommu_domain_to_private_memory_is_refused():
    w = World()
    _, pa = td_with_memory(w)
    w.host_dma(0x10000, pa, PAGE)
    w.host_dma(0x20000, pa + PAGE, PAGE, write=False)
    msgs = w.violations()
    assert len(msgs) == 2 and f"dma:{BDF} writes" in msgs[0] and f"dma:{BDF} reads" in msgs[1]
    assert w.phys.read(pa, 8, "vcpu:td1.0") == bytes(8)  # the write was dropped


def test_aug_refusals_change_nothing():
    w = World()
    tdx, pa = td_with_memory(w)
    other, _ = w.ram(2 * PAGE, "gmem:td1")
    before = snapshot(w, tdx)
    assert status(tdx.mem_page_aug, "td1", 1 << 30, pa, PAGE) == "TDX_PAGE_METADATA_INCORRECT"
    assert status(tdx.mem_page_aug, "td1", 0, other, PAGE) == "TDX_EPT_ENTRY_NOT_FREE"
    assert status(tdx.mem_page_aug, "td9", 1 << 30, other, PAGE) == "TDX_OPERAND_INVALID"
    assert status(tdx.mem_page_aug, "td1", 1 << 30, other + 1, PAGE) == "TDX_OPERAND_INVALID"
    free = 40 * GiB  # RAM nobody allocated: not the host's to give
    assert status(tdx.mem_page_aug, "td1", 1 << 30, free, PAGE) == "TDX_OPERAND_INVALID"
    assert snapshot(w, tdx) == before


def test_add_needs_no_accept_and_accept_twice_is_a_success_status():
    w = World()
    tdx = TdxModule(w.sched, w.phys)
    tdx.td_create("td1", hkid=1)
    pa, _ = w.ram(2 * PAGE, "gmem:td1")
    tdx.mem_page_add("td1", 0, pa, PAGE)
    tdx.mem_page_aug("td1", PAGE, pa + PAGE, PAGE)
    assert tdx.translate("td1", 0)[1].state == "mapped"  # type: ignore[index]
    assert tdx.translate("td1", PAGE)[1].state == "pending"  # type: ignore[index]
    assert tdx.mem_page_accept("td1", 0, 2 * PAGE) == "TDX_SUCCESS"
    assert tdx.mem_page_accept("td1", 0, 2 * PAGE) == "TDX_PAGE_ALREADY_ACCEPTED"
    assert status(tdx.mem_page_accept, "td1", 4 * PAGE, PAGE) == "TDX_EPT_WALK_FAILED"


def test_remove_needs_block_then_track_and_gives_the_pages_back():
    w = World()
    tdx, pa = td_with_memory(w)
    before = snapshot(w, tdx)
    assert status(tdx.mem_page_remove, "td1", 0, 2 * PAGE) == "TDX_GPA_RANGE_NOT_BLOCKED"
    assert snapshot(w, tdx) == before
    assert tdx.mem_range_block("td1", 0, 2 * PAGE) == "TDX_SUCCESS"
    assert tdx.mem_range_block("td1", 0, 2 * PAGE) == "TDX_GPA_RANGE_ALREADY_BLOCKED"
    assert status(tdx.mem_page_accept, "td1", 0, PAGE) == "TDX_GPA_RANGE_BLOCKED"
    blocked = snapshot(w, tdx)
    assert status(tdx.mem_page_remove, "td1", 0, 2 * PAGE) == "TDX_TLB_TRACKING_NOT_DONE"
    assert snapshot(w, tdx) == blocked
    tdx.mem_track("td1")
    assert tdx.mem_page_remove("td1", 0, 2 * PAGE) == "TDX_SUCCESS"
    assert tdx.owner(pa) is None and tdx.translate("td1", 0) is None
    assert w.phys.owner_of(pa) == Owner("gmem:td1")  # the host's again
    w.phys.write(pa, b"host", "cpu:qemu")
    assert w.violations() == [] and tdx.invariant() is None
    assert status(tdx.mmio_block, "td1", 2 * PAGE, PAGE) == "TDX_EPT_ENTRY_STATE_INCORRECT"


def test_the_host_freeing_private_memory_is_a_violation_and_leaks_it():
    w = World()
    _, pa = td_with_memory(w, size=4 * PAGE)
    spare, _ = w.ram(PAGE, "gmem:td1")
    w.phys.release(pa, spare + PAGE)  # a punch hole that skipped the firmware
    msgs = w.violations()
    assert len(msgs) == 1 and "while the secure firmware holds it (tdx:private:td1)" in msgs[0]
    assert w.phys.owner_of(pa).state == "tdx:private:td1"  # type: ignore[union-attr]
    assert w.phys.owner_of(spare) is None  # the rest was freed


def test_td_destroy_refused_while_it_owns_pages_or_tdis():
    w = World()
    tdx, _, _ = bound(w, run=False)
    assert status(tdx.td_destroy, "td1") == "TDX_TD_HAS_ATTACHED_DEVICES"
    assert status(tdx.td_create, "td1", 7) == "TDX_OPERAND_INVALID"
    assert status(tdx.td_create, "td2", 1) == "TDX_HKID_NOT_FREE"
    tdx2 = TdxModule(w.sched, w.phys)
    tdx2.td_create("td3", 3)
    pa, _ = w.ram(PAGE, "gmem:td3")
    tdx2.mem_page_aug("td3", 0, pa, PAGE)
    assert status(tdx2.td_destroy, "td3") == "TDX_TD_ASSOCIATED_PAGES_EXIST"
    tdx2.mem_range_block("td3", 0, PAGE)
    tdx2.mem_track("td3")
    tdx2.mem_page_remove("td3", 0, PAGE)
    assert tdx2.td_destroy("td3") == "TDX_SUCCESS" and "td3" not in tdx2.tds


# ----- TDIs, private MMIO and the trusted device context table ------------------------------


def test_bind_takes_metadata_and_relays_tdisp():
    w = World()
    tdx, _, meta = bound(w, run=False)
    d = tdx.devif(BDF)
    assert d is not None and d.tdisp_sts == TdiState.CONFIG_LOCKED and len(d.nonce) == 32
    assert tdx.owner(meta[0]) == Pamt("PT_DEVIF", BDF)
    assert w.phys.owner_of(meta[0]).state == "tdx:metadata"  # type: ignore[union-attr]
    w.phys.read(meta[0], 8, "kernel")
    assert "owned by kernel:tdx-meta (tdx:metadata)" in w.violations()[0]
    tdx.tdi_start(BDF)
    assert w.tdi.tdi_state == TdiState.RUN and tdx.devif(BDF).tdisp_sts == TdiState.RUN  # type: ignore[union-attr]
    assert tdx.dmar_entry(BDF) == ("td1", "present") and tdx.invariant() is None


def test_devif_create_refusals():
    w = World()
    tdx, _ = td_with_memory(w)
    meta = w.ram(PAGE, "kernel:meta")
    before = snapshot(w, tdx)
    assert status(tdx.devif_create, BDF, "td9", w.tdi, [meta]) == "TDX_OPERAND_INVALID"
    assert status(tdx.devif_create, BDF, "td1", w.tdi, []) == "TDX_OPERAND_INVALID"
    assert status(tdx.devif_create, BDF, "td1", w.tdi, [(40 * GiB, 40 * GiB + PAGE)]) \
        == "TDX_OPERAND_INVALID"
    priv = tdx.translate("td1", 0)[0]  # type: ignore[index]
    assert status(tdx.devif_create, BDF, "td1", w.tdi, [(priv, priv + PAGE)]) \
        == "TDX_PAGE_METADATA_INCORRECT"
    assert snapshot(w, tdx) == before
    tdx.devif_create(BDF, "td1", w.tdi, [meta])
    assert status(tdx.devif_create, BDF, "td1", w.tdi, [meta]) == "TDX_DEVIFMT_ALREADY_PRESENT"
    assert status(tdx.tdi_stop, "0000:09:00.0") == "TDX_DEVIFMT_NOT_PRESENT"
    tdx.tdi_lock(BDF)
    tdx2 = TdxModule(w.sched, w.phys)
    tdx2.td_create("td2", 2)
    meta2 = w.ram(PAGE, "kernel:meta")
    assert status(tdx2.devif_create, BDF, "td2", w.tdi, [meta2]) \
        == "TDX_DEVIF_TDISP_INVALID_STATE"  # a locked TDI cannot be bound again


def test_tdisp_errors_come_back_as_invalid_message():
    w = World()
    tdx, _, _ = bound(w, run=False)
    assert status(tdx.tdi_lock, BDF) == "TDX_DEVIF_TDISP_INVALID_MESSAGE"  # locked already
    w.tdi.on_flr()  # the device goes to ERROR; the module does not know yet
    assert tdx.devif(BDF).tdisp_sts == TdiState.CONFIG_LOCKED  # type: ignore[union-attr]
    assert tdx.tdi_state(BDF) == TdiState.ERROR
    assert tdx.devif(BDF).tdisp_sts == TdiState.ERROR  # type: ignore[union-attr]
    assert status(tdx.tdi_start, BDF) == "TDX_DEVIF_TDISP_INVALID_MESSAGE"


def test_start_without_a_held_nonce_is_invalid_state_and_reaches_no_device():
    w = World()
    tdx, _, _ = bound(w, run=True)  # START used LOCK's nonce
    before = tdx.tdi_state(BDF)
    assert status(tdx.tdi_start, BDF) == "TDX_DEVIF_INVALID_STATE"
    assert tdx.tdi_state(BDF) == before == TdiState.RUN


def test_mmio_map_refusals():
    w = World()
    tdx, _ = td_with_memory(w)
    meta = w.ram(PAGE, "kernel:meta")
    tdx.devif_create(BDF, "td1", w.tdi, [meta])
    # not locked yet: the device still lets the host in, so it is no private MMIO
    assert status(tdx.mmio_map, "td1", MMIO_GPA, BAR0, BAR_SIZE, BDF) \
        == "TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE"
    tdx.tdi_lock(BDF)
    tdx.td_create("td2", 2)
    before = snapshot(w, tdx)
    assert status(tdx.mmio_map, "td2", MMIO_GPA, BAR0, BAR_SIZE, BDF) \
        == "TDX_MMIO_DEVIF_OWNER_MISMATCH"
    assert status(tdx.mmio_map, "td1", MMIO_GPA, BAR0 - PAGE, 2 * PAGE, BDF) \
        == "TDX_MMIO_PAGE_NOT_IN_ASSOC_RANGE"
    assert status(tdx.mmio_map, "td1", 0, BAR0, PAGE, BDF) == "TDX_EPT_ENTRY_STATE_INCORRECT"
    assert snapshot(w, tdx) == before
    tdx.mmio_map("td1", MMIO_GPA, BAR0, PAGE, BDF)
    assert status(tdx.mmio_map, "td1", MMIO_GPA + PAGE, BAR0, PAGE, BDF) \
        == "TDX_MMIO_INVALID_PAGE_METADATA"
    tdx.tdi_stop(BDF)
    assert status(tdx.mmio_accept, "td1", MMIO_GPA, PAGE) == "TDX_DEVIF_TDISP_INVALID_STATE"


def test_private_mmio_reaches_the_td_only():
    w = World()
    tdx, _, _ = bound(w)
    w.phys.write(BAR0 + 0x10, b"\x01\x02", "vcpu:td1.0")
    assert w.phys.read(BAR0 + 0x10, 2, "vcpu:td1.1") == b"\x01\x02" and w.violations() == []
    assert w.phys.read(BAR0 + 0x10, 2, "cpu:qemu") == b"\xff\xff"  # refused, all ones
    w.phys.write(BAR0 + 0x10, b"\x00", "kernel")
    w.host_dma(0x40000, BAR0, PAGE)  # P2P through the host domain
    msgs = w.violations()
    assert len(msgs) == 3 and all(" MMIO [0xe00000" in m and
                                  "owned by tdi:0000:01:00.0 (tdx:mmio:td1)" in m for m in msgs)
    assert ("r", "cpu:qemu", BAR0 + 0x10) not in w.bar.seen  # never reached the device
    assert w.bar.regs[BAR0 + 0x10] == 1


def test_trusted_dma_goes_through_the_context_entry_and_the_sept():
    w = World()
    tdx, pa, _ = bound(w, run=False)
    assert tdx.dma(BDF, 0x100, 4, True, b"abcd") is None  # CONFIG_LOCKED: no T=1 DMA yet
    tdx.tdi_start(BDF)
    assert tdx.dma(BDF, 0x100, 4, True, b"abcd") == b""
    assert w.phys.read(pa + 0x100, 4, "vcpu:td1.0") == b"abcd"
    assert tdx.dma(BDF, 0x100, 4, False) == b"abcd" and w.violations() == []
    assert tdx.dma(BDF, 1 << 40, 4, False) is None  # unmapped GPA
    assert tdx.dma(BDF, MMIO_GPA, 4, False) is None  # MMIO is no DMA target here
    faults = [dict(e.args)["reason"] for e in w.sched.log.events if e.event == "dma-fault"]
    assert len(faults) == 3 and "not in RUN" in faults[0]


def test_dmar_add_and_remove_refusals():
    w = World()
    tdx, _ = td_with_memory(w)
    meta = w.ram(PAGE, "kernel:meta")
    tdx.devif_create(BDF, "td1", w.tdi, [meta])
    assert status(tdx.dmar_add, BDF, "td1") == "TDX_DEVIF_TDISP_INVALID_STATE"  # unlocked
    tdx.tdi_lock(BDF)
    tdx.td_create("td2", 2)
    assert status(tdx.dmar_add, BDF, "td2") == "TDX_OPERAND_INVALID"
    tdx.dmar_add(BDF, "td1")
    assert status(tdx.dmar_add, BDF, "td1") == "TDX_DMAR_INVALID_MAPPING_STATE"
    assert status(tdx.dmar_remove, BDF) == "TDX_DMAR_INVALID_MAPPING_STATE"  # not blocked


# ----- the unbind order ---------------------------------------------------------------------


def test_unbind_in_the_right_order_gives_the_mmio_back():
    w = World()
    tdx, _, meta = bound(w)
    tdx.tdi_stop(BDF)  # 1
    assert w.tdi.tdi_state == TdiState.CONFIG_UNLOCKED
    unmap_mmio(tdx)  # 2
    assert tdx.translate("td1", MMIO_GPA) is None and tdx.devif(BDF).mmio_mapped == 0  # type: ignore[union-attr]
    w.phys.read(BAR0, 4, "cpu:qemu")  # still held by the module: not the host's yet
    assert "owned by tdi:0000:01:00.0 (tdx:mmio-held:td1)" in w.violations()[0]
    w.clear()
    clear_dmar(tdx)  # 3
    assert tdx.dmar_entry(BDF) is None
    assert tdx.devif_remove(BDF) == [meta]  # 4
    assert list(tdx.mmiomt) == [] and list(w.phys.mmio_claims) == []
    w.phys.write(BAR0, b"host", "cpu:qemu")
    assert w.phys.read(BAR0, 4, "cpu:qemu") == b"host"
    assert w.phys.owner_of(meta[0]) == Owner("kernel:tdx-meta")
    assert w.violations() == [] and tdx.invariant() is None
    events = [e.event for e in w.sched.log.events if e.subsystem == "tdx"]
    assert events[-7:] == ["devif.request", "mmio.block", "mem.track", "mmio.unmap",
                           "dmar.block", "dmar.remove", "devif.remove"]


def test_unmapping_mmio_before_stop_fails():
    w = World()
    tdx, _, _ = bound(w)
    tdx.mmio_block("td1", MMIO_GPA, BAR_SIZE)
    tdx.mem_track("td1")
    before = snapshot(w, tdx)
    assert status(tdx.mmio_unmap, "td1", MMIO_GPA, BAR_SIZE) == "TDX_DEVIF_TDISP_INVALID_STATE"
    assert snapshot(w, tdx) == before


def test_unmapping_mmio_unblocked_or_untracked_fails():
    w = World()
    tdx, _, _ = bound(w)
    tdx.tdi_stop(BDF)
    before = snapshot(w, tdx)
    assert status(tdx.mmio_unmap, "td1", MMIO_GPA, BAR_SIZE) == "TDX_GPA_RANGE_NOT_BLOCKED"
    assert snapshot(w, tdx) == before
    tdx.mmio_block("td1", MMIO_GPA, BAR_SIZE)
    before = snapshot(w, tdx)
    assert status(tdx.mmio_unmap, "td1", MMIO_GPA, BAR_SIZE) == "TDX_TLB_TRACKING_NOT_DONE"
    assert snapshot(w, tdx) == before


@pytest.mark.parametrize("done", ["nothing", "stop"])
def test_clearing_the_context_entry_too_early_fails(done):
    w = World()
    tdx, _, _ = bound(w)
    if done == "stop":
        tdx.tdi_stop(BDF)
    before = snapshot(w, tdx)
    want = "TDX_DEVIF_TDISP_INVALID_STATE" if done == "nothing" else "TDX_DEVIF_HAS_MAPPED_MMIO"
    assert status(tdx.dmar_block, BDF) == want
    assert snapshot(w, tdx) == before


@pytest.mark.parametrize("done,want", [
    ("nothing", "TDX_DEVIF_INVALID_STATE"),
    ("stop", "TDX_DEVIF_HAS_MAPPED_DMA"),
    ("stop+unmap", "TDX_DEVIF_HAS_MAPPED_DMA"),
])
def test_reclaiming_too_early_fails_and_the_mmio_stays_held(done, want):
    w = World()
    tdx, _, _ = bound(w)
    if "stop" in done:
        tdx.tdi_stop(BDF)
    if "unmap" in done:
        unmap_mmio(tdx)
    before = snapshot(w, tdx)
    assert status(tdx.devif_remove, BDF) == want
    assert snapshot(w, tdx) == before
    w.phys.read(BAR0, 4, "cpu:qemu")
    assert len(w.violations()) == 1


def test_module_order_lets_steps_two_and_three_commute():
    """The module source (rfc_order=False) checks MMIO only at reclaim."""
    w = World()
    tdx, _, _ = bound(w, rfc_order=False)
    tdx.tdi_stop(BDF)
    clear_dmar(tdx)  # 3 before 2: allowed by the module
    before = snapshot(w, tdx)
    assert status(tdx.devif_remove, BDF) == "TDX_DEVIF_HAS_MAPPED_MMIO"
    assert snapshot(w, tdx) == before
    unmap_mmio(tdx)
    tdx.devif_remove(BDF)
    assert list(w.phys.mmio_claims) == []


def test_unbind_after_an_flr_needs_the_module_to_learn_of_error_then_stop():
    w = World()
    tdx, _, _ = bound(w)
    w.tdi.on_flr()  # ERROR; the device stops T=1 DMA at once
    assert tdx.dma(BDF, 0, 4, False) is None
    tdx.mmio_block("td1", MMIO_GPA, BAR_SIZE)
    tdx.mem_track("td1")
    assert status(tdx.mmio_unmap, "td1", MMIO_GPA, BAR_SIZE) == "TDX_DEVIF_TDISP_INVALID_STATE"
    tdx.tdi_stop(BDF)  # STOP leaves ERROR
    tdx.mmio_unmap("td1", MMIO_GPA, BAR_SIZE)
    clear_dmar(tdx)
    tdx.devif_remove(BDF)
    assert list(w.phys.mmio_claims) == [] and w.violations() == []


# ----- the checker's view: faults, determinism, footprints ----------------------------------


def test_an_injected_busy_seamcall_changes_nothing():
    w = World()
    tdx, _ = td_with_memory(w, size=PAGE)
    w.sched.fail_nth = frozenset({w.sched.faults_seen + 1})  # the next fault point fails
    before = snapshot(w, tdx)
    assert status(tdx.mem_range_block, "td1", 0, PAGE) == "TDX_OPERAND_BUSY"
    assert snapshot(w, tdx) == before
    assert [k for _, k in w.sched.faults_failed] == ["tdx-busy"]
    assert tdx.mem_range_block("td1", 0, PAGE) == "TDX_SUCCESS"  # a retry goes through


def _run_unbind() -> str:
    w = World()
    tdx, _, _ = bound(w)
    tdx.dma(BDF, 0x40, 8, True, b"12345678")
    w.phys.read(BAR0, 4, "cpu:qemu")
    tdx.tdi_stop(BDF)
    unmap_mmio(tdx)
    clear_dmar(tdx)
    tdx.devif_remove(BDF)
    return w.sched.log.text()


def test_the_event_log_is_deterministic_and_one_event_per_call():
    a, b = _run_unbind(), _run_unbind()
    assert a == b
    lines = a.splitlines()
    assert any("tdx.mem.page.aug" in ln and "before=free after=pending" in ln for ln in lines)
    assert any("phys.claim-mmio" in ln and "after=tdi:0000:01:00.0/tdx:mmio:td1" in ln
               for ln in lines)
    assert sum("tdx.mmio.unmap" in ln for ln in lines) == 1


def test_the_checker_sees_firmware_tables_in_footprints():
    """What a SEAMCALL touches is in its step's footprint, so the explorer orders a host access
    against the call that made the page private; no data race between them (the module's
    tables are atomic, physical truth is the oracle)."""
    sched = Scheduler(track=True)
    tr = sched.tracker
    assert tr is not None
    tr.activate()
    try:
        w = World(sched)
        tdx = TdxModule(w.sched, w.phys)
        pa, _ = w.ram(PAGE, "gmem:td1")

        def vmm() -> None:
            tdx.td_create("td1", 1)
            tdx.mem_page_aug("td1", 0, pa, PAGE)

        def host() -> None:
            w.phys.read(pa, 8, "cpu:qemu")

        w.sched.spawn("vmm", vmm)
        w.sched.spawn("host", host)
        w.sched.run()
    finally:
        tr.deactivate()
    assert [v.kind for v in w.sched.violations] == ["physical"]  # host read after the AUG
    touched = {tr.label(uid).split(" ")[0] for fp in w.sched.step_fps for uid in fp}
    assert {"tdx.tds", "tdx.pamt", "tdx.sept.td1", "physmem.owners"} <= touched
