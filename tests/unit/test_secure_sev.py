"""AMD SEV-SNP/SEV-TIO as physical truth (hw/secure/sev.py): the RMP as extents, RMPUPDATE and
PVALIDATE, TIO TDI bind/run/stop/unbind, SDTE_WRITE, MMIO_VALIDATE, trusted DMA through the
host-built table, and the ``rfc-sev-tio`` invariant that the host's IOMMU table mirrors the
RMP — holding across a private → shared conversion when the mirror follows it, violated when
it does not. Host CPU and normal-domain DMA to assigned memory and MMIO are ``physical``
violations. Model-only."""

from __future__ import annotations

from typing import Any

import pytest
from secure_world import BAR0, BAR_SIZE, BDF, PAGE, GiB, MiB, World

from passthru.hw import Owner
from passthru.hw.iommu import IOMMU_READ, IOMMU_WRITE, IoPageTable
from passthru.hw.secure.sev import RmpEntry, SevError, SevFirmware
from passthru.hw.tdisp import TdiState

ASID, GDID = 5, 0x0100
VTOM = 1 << 41
MMIO_GPA = 0x10_0000_0000


def status(call: Any, *a: Any, **kw: Any) -> str:
    with pytest.raises(SevError) as e:
        call(*a, **kw)
    return e.value.status


def snapshot(w: World, sev: SevFirmware) -> tuple[object, ...]:
    return (list(sev.rmp), dict(sev.guests), dict(sev.tdis), dict(sev.sdt),
            list(w.phys.owners), list(w.phys.mmio_claims), w.tdi.tdi_state)


def guest(w: World, size: int = 64 * MiB, validate: bool = True) -> tuple[SevFirmware, int]:
    sev = SevFirmware(w.sched, w.phys)
    sev.snp_launch_start("vm1", ASID)
    pa, _ = w.ram(size, "gmem:vm1")
    sev.rmp_make_private(pa, size, ASID, 0)
    if validate:
        assert sev.pvalidate(ASID, 0, pa, size) is True
    return sev, pa


def mirror_of(pa: int, size: int, gpa: int = 0) -> IoPageTable:
    """The host's IOMMU table for the guest's private memory (IOVA = GPA)."""
    table = IoPageTable(PAGE, "mirror")
    table.map(gpa, pa, size, IOMMU_READ | IOMMU_WRITE)
    return table


def bound(w: World, run: bool = True) -> tuple[SevFirmware, int]:
    """A validated guest with the TDI bound (LOCKED), its MMIO assigned and validated, its
    SDTE written; RUN."""
    sev, pa = guest(w)
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    sev.rmp_make_private_mmio(BAR0, BAR_SIZE, ASID, MMIO_GPA)
    sev.tio_sdte_write(ASID, GDID, VTOM)
    if run:
        sev.tio_tdi_run(BDF)
    sev.tio_mmio_validate(ASID, GDID, MMIO_GPA, BAR_SIZE, range_id=0)
    return sev, pa


# ----- the RMP -------------------------------------------------------------------------------


def test_one_gib_private_is_one_rmp_extent_and_validation_gates_the_guest():
    w = World()
    sev, pa = guest(w, size=GiB, validate=False)
    assert list(sev.rmp) == [(pa, pa + GiB, RmpEntry(ASID, -pa, False))]
    assert len(w.phys.owners) == 1
    w.phys.read(pa, 4, "vcpu:vm1.0")  # not validated yet: refused
    assert "(snp:vm1:unvalidated)" in w.violations()[0]
    w.clear()
    assert sev.pvalidate(ASID, 0, pa, GiB) is True
    assert sev.pvalidate(ASID, 0, pa, GiB) is False  # nothing to change (CF=1)
    assert len(sev.rmp) == 1 and sev.rmp_lookup(pa + 5 * MiB) == RmpEntry(ASID, -pa, True)
    w.phys.write(pa, b"guest", "vcpu:vm1.1")
    assert w.phys.read(pa, 5, "vcpu:vm1.0") == b"guest" and w.violations() == []


def test_host_cpu_and_dma_to_assigned_memory_are_refused():
    w = World()
    _, pa = guest(w)
    w.phys.read(pa, 4, "cpu:qemu")
    w.phys.write(pa, b"x", "kernel")
    w.host_dma(0x1000, pa, PAGE)
    msgs = w.violations()
    assert len(msgs) == 3 and all("owned by gmem:vm1 (snp:vm1)" in m for m in msgs)
    assert f"dma:{BDF} writes" in msgs[2]


def test_pvalidate_checks_owner_and_guest_address():
    w = World()
    sev, pa = guest(w, validate=False)
    other, _ = w.ram(PAGE, "anon:qemu")
    before = snapshot(w, sev)
    assert status(sev.pvalidate, ASID, PAGE, pa, PAGE) == "NPF_RMP"  # wrong GPA
    assert status(sev.pvalidate, ASID, 0, other, PAGE) == "NPF_RMP"  # the hypervisor's page
    assert status(sev.pvalidate, ASID, 0, pa + 1, PAGE) == "PVALIDATE_FAIL_INPUT"
    assert status(sev.pvalidate, 9, 0, pa, PAGE) == "PVALIDATE_FAIL_INPUT"
    sev.snp_launch_start("vm2", 6)
    assert status(sev.pvalidate, 6, 0, pa, PAGE) == "NPF_RMP"  # another guest's page
    assert snapshot(w, sev)[0] == before[0]


def test_rmpupdate_refusals_change_nothing():
    w = World()
    sev, pa = guest(w)
    fw, _ = w.ram(PAGE, "kernel:psp")
    sev.rmp_make_private(fw, PAGE, ASID, 1 << 30, immutable=True)
    before = snapshot(w, sev)
    assert status(sev.rmp_make_shared, fw, PAGE) == "RMPUPDATE_FAIL_PERMISSION"
    assert status(sev.rmp_make_private, fw, PAGE, ASID, 0) == "RMPUPDATE_FAIL_PERMISSION"
    assert status(sev.rmp_make_private, pa, PAGE, 9, 0) == "RMPUPDATE_FAIL_INPUT"
    assert status(sev.rmp_make_private, 40 * GiB, PAGE, ASID, 0) == "RMPUPDATE_FAIL_INPUT"
    assert status(sev.rmp_make_private, pa + 1, PAGE, ASID, 0) == "RMPUPDATE_FAIL_INPUT"
    assert status(sev.rmp_make_private_mmio, pa, PAGE, ASID, 0) == "RMPUPDATE_FAIL_INPUT"
    assert snapshot(w, sev) == before


def test_reassigning_a_page_clears_validated():
    """The hypervisor may RMPUPDATE an assigned page to another guest or address; the page is
    then unvalidated and the first guest can no longer use it."""
    w = World()
    sev, pa = guest(w)
    sev.snp_launch_start("vm2", 6)
    sev.rmp_make_private(pa, PAGE, 6, 0x5000)
    assert sev.rmp_lookup(pa) == RmpEntry(6, 0x5000 - pa, False)
    w.phys.read(pa, 4, "vcpu:vm1.0")
    w.phys.read(pa, 4, "vcpu:vm2.0")
    assert len(w.violations()) == 2
    w.clear()
    sev.pvalidate(6, 0x5000, pa, PAGE)
    w.phys.read(pa, 4, "vcpu:vm2.0")
    assert w.violations() == []


def test_conversion_to_shared_gives_the_page_back():
    w = World()
    sev, pa = guest(w)
    sev.rmp_make_shared(pa, PAGE)
    assert sev.rmp_lookup(pa) is None and w.phys.owner_of(pa) == Owner("gmem:vm1")
    w.phys.write(pa, b"shared", "cpu:qemu")
    assert w.violations() == []
    assert len(sev.rmp) == 1  # the rest is still one extent


def test_the_host_freeing_assigned_memory_is_a_violation():
    w = World()
    _, pa = guest(w, size=PAGE)
    w.phys.release(pa, pa + PAGE)
    assert "while the secure firmware holds it (snp:vm1)" in w.violations()[0]


def test_launch_and_decommission_refusals():
    w = World()
    sev, _ = guest(w)
    assert status(sev.snp_launch_start, "vm9", ASID) == "SEV_RET_ASID_OWNED"
    assert status(sev.snp_launch_start, "vm1", 7) == "SEV_RET_INVALID_PARAM"
    assert status(sev.snp_decommission, 9) == "SEV_RET_INVALID_GUEST"
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    assert status(sev.snp_decommission, ASID) == "SEV_RET_IN_USE"
    sev.tio_tdi_unbind(BDF)
    sev.snp_decommission(ASID)
    assert ASID not in sev.guests


# ----- TIO -------------------------------------------------------------------------------------


def test_bind_locks_the_tdi_and_its_refusals_change_nothing():
    w = World()
    sev, _ = guest(w)
    before = snapshot(w, sev)
    assert status(sev.tio_tdi_bind, BDF, w.tdi, 9, GDID) == "SEV_RET_INVALID_GUEST"
    assert snapshot(w, sev) == before
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    assert w.tdi.tdi_state == TdiState.CONFIG_LOCKED
    before = snapshot(w, sev)
    assert status(sev.tio_tdi_bind, BDF, w.tdi, ASID, GDID + 1) == "SEV_RET_IN_USE"
    assert status(sev.tio_tdi_bind, "0000:02:00.0", w.tdi, ASID, GDID) \
        == "SEV_RET_INVALID_PARAM"  # the guest device id is taken
    assert status(sev.tio_tdi_bind, "0000:02:00.0", w.tdi, ASID, GDID + 1) \
        == "SEV_RET_SEV_STATUS_INVALID_TDI_STATE"  # that TDI is locked already
    assert status(sev.tio_tdi_run, "0000:09:00.0") == "SEV_RET_SEV_STATUS_INVALID_TDI"
    assert snapshot(w, sev) == before


def test_run_and_stop_speak_tdisp():
    w = World()
    sev, _ = guest(w)
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    sev.tio_tdi_run(BDF)
    assert w.tdi.tdi_state == TdiState.RUN
    assert status(sev.tio_tdi_run, BDF) == "SEV_RET_SPDM_ERROR"  # START in RUN
    sev.tio_tdi_stop(BDF)
    assert w.tdi.tdi_state == TdiState.CONFIG_UNLOCKED and BDF in sev.tdis


def test_sdte_write():
    w = World()
    sev, _ = guest(w)
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    assert status(sev.tio_sdte_write, ASID, GDID + 1, VTOM) == "SDTE_WRITE_INVALID_TDI"
    assert status(sev.tio_sdte_write, 6, GDID, VTOM) == "SDTE_WRITE_INVALID_TDI"
    sev.tio_sdte_write(ASID, GDID, VTOM)
    sdte = sev.sdte(BDF)
    assert sdte is not None and (sdte.asid, sdte.guest_device_id, sdte.vtom) == (ASID, GDID, VTOM)
    sev.tio_sdte_write(ASID, GDID, VTOM, valid=False)
    assert sev.sdte(BDF) is None
    sev.tio_tdi_stop(BDF)
    assert status(sev.tio_sdte_write, ASID, GDID, VTOM) == "SDTE_WRITE_TDI_NOT_BOUND"


def test_private_mmio_is_refused_to_the_host_and_to_an_unvalidated_guest():
    w = World()
    sev, _ = guest(w)
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    sev.rmp_make_private_mmio(BAR0, BAR_SIZE, ASID, MMIO_GPA)
    assert len(sev.rmp) == 2  # memory and MMIO: one extent each
    assert w.phys.read(BAR0, 2, "vcpu:vm1.0") == b"\xff\xff"
    assert "MMIO [0xe0000000, 0xe0000002) owned by tdi:0000:01:00.0 (snp:vm1:unvalidated)" \
        in w.violations()[0]
    w.clear()
    assert sev.tio_mmio_validate(ASID, GDID, MMIO_GPA, BAR_SIZE, 0) is True
    w.phys.write(BAR0, b"\x07", "vcpu:vm1.0")
    assert w.violations() == [] and w.bar.regs[BAR0] == 7
    w.phys.read(BAR0, 1, "cpu:qemu")
    w.host_dma(0x8000, BAR0, PAGE)
    assert len(w.violations()) == 2 and all("(snp:vm1)" in m for m in w.violations())


def test_mmio_validate_statuses():
    w = World()
    sev, _ = guest(w)
    sev.tio_tdi_bind(BDF, w.tdi, ASID, GDID)
    args = (ASID, GDID, MMIO_GPA, BAR_SIZE)
    assert status(sev.tio_mmio_validate, *args, 0) == "MMIO_VALIDATE_NOT_ASSIGNED"
    sev.rmp_make_private_mmio(BAR0, BAR_SIZE, ASID, MMIO_GPA)
    before = snapshot(w, sev)
    assert status(sev.tio_mmio_validate, ASID, GDID + 1, MMIO_GPA, PAGE, 0) \
        == "MMIO_VALIDATE_INVALID_TDI"
    assert status(sev.tio_mmio_validate, *args, 2) == "MMIO_VALIDATE_NOT_REPORTED"
    assert status(sev.tio_mmio_validate, ASID, GDID, MMIO_GPA, 2 * BAR_SIZE, 0) \
        == "MMIO_VALIDATE_OUT_OF_RANGE"
    assert status(sev.tio_mmio_validate, ASID, GDID, 0, BAR_SIZE, 0) \
        == "MMIO_VALIDATE_NOT_MAPPED"
    assert snapshot(w, sev) == before
    sev.tio_mmio_validate(ASID, GDID, MMIO_GPA, PAGE, 0)  # the first page only
    assert status(sev.tio_mmio_validate, *args, 0) == "MMIO_VALIDATE_NOT_UNIFORM"
    assert sev.tio_mmio_validate(*args, 0, force=True) is True
    sev.tio_tdi_stop(BDF)
    assert status(sev.tio_mmio_validate, *args, 0) == "MMIO_VALIDATE_TDI_UNBOUND"


def test_unbind_cleans_up_but_the_mmio_is_the_hosts_only_after_rmpupdate():
    w = World()
    sev, _ = bound(w)
    sev.tio_tdi_unbind(BDF)
    assert w.tdi.tdi_state == TdiState.CONFIG_UNLOCKED
    assert sev.sdte(BDF) is None and BDF not in sev.tdis
    assert sev.rmp_lookup(BAR0) == RmpEntry(ASID, MMIO_GPA - BAR0, False, mmio=True)
    w.phys.read(BAR0, 1, "cpu:qemu")
    w.phys.read(BAR0, 1, "vcpu:vm1.0")  # invalidated: the guest lost it too
    assert len(w.violations()) == 2
    w.clear()
    sev.rmp_make_shared(BAR0, BAR_SIZE)
    w.phys.write(BAR0, b"\x01", "cpu:qemu")
    assert w.violations() == [] and list(w.phys.mmio_claims) == []


# ----- trusted DMA and the mirror -------------------------------------------------------------


def test_trusted_dma_through_the_mirror():
    w = World()
    sev, pa = bound(w, run=False)
    mirror = mirror_of(pa, 64 * MiB)
    assert sev.tio_dma(BDF, mirror, 0x40, 4, True, b"dma!") is None  # not RUN yet
    sev.tio_tdi_run(BDF)
    assert sev.tio_dma(BDF, mirror, 0x40, 4, True, b"dma!") == b""
    assert w.phys.read(pa + 0x40, 4, "vcpu:vm1.0") == b"dma!"
    assert sev.tio_dma(BDF, mirror, 0x40, 4, False) == b"dma!"
    assert sev.tio_dma(BDF, mirror, 64 * MiB, 4, False) is None  # not mirrored
    assert sev.tio_dma(BDF, mirror, VTOM, 4, False) is None  # shared: not this path
    assert w.violations() == []


def test_the_mirror_holds_across_a_conversion_when_it_follows():
    w = World()
    sev, pa = guest(w, size=GiB)
    mirror = mirror_of(pa, GiB)
    assert len(mirror) == 1 and sev.mirror_matches(ASID, mirror.mapped(0, 1 << 48))
    # private -> shared of 2 MiB at GPA 16 MiB: the host unmaps the mirror first, then converts
    mirror.unmap(16 * MiB, 2 * MiB)
    sev.rmp_make_shared(pa + 16 * MiB, 2 * MiB)
    assert sev.mirror_matches(ASID, mirror.mapped(0, 1 << 48))
    # and back to private: RMPUPDATE, then the mirror maps it again
    sev.rmp_make_private(pa + 16 * MiB, 2 * MiB, ASID, 16 * MiB)
    mirror.map(16 * MiB, pa + 16 * MiB, 2 * MiB, IOMMU_READ | IOMMU_WRITE)
    assert sev.mirror_matches(ASID, mirror.mapped(0, 1 << 48))
    assert w.violations() == []


def test_a_mirror_left_behind_by_a_conversion_is_a_violation():
    w = World()
    sev, pa = bound(w)
    mirror = mirror_of(pa, 64 * MiB)
    sev.rmp_make_shared(pa + 8 * MiB, PAGE)  # converted; the mirror still maps it
    problems = sev.mirror_problems(ASID, mirror.mapped(0, 1 << 48))
    assert len(problems) == 1 and "is not assigned in the RMP" in problems[0]
    assert sev.mirror_matches(ASID, mirror.mapped(0, 1 << 48)) is False
    assert [v.kind for v in w.sched.violations] == ["rmp-mirror"]
    w.clear()
    # trusted DMA through the stale entry: the IOMMU's RMP check catches it
    assert sev.tio_dma(BDF, mirror, 8 * MiB, 8, True, b"stale!!!") is None
    assert [v.kind for v in w.sched.violations] == ["rmp-mirror"]


def test_a_mirror_missing_private_memory_or_at_the_wrong_address_is_a_violation():
    w = World()
    sev, pa = guest(w)
    partial = mirror_of(pa, 32 * MiB)
    assert "is not mirrored there" in sev.mirror_problems(ASID, partial.mapped(0, 1 << 48))[0]
    shifted = mirror_of(pa, 64 * MiB, gpa=PAGE)
    problems = sev.mirror_problems(ASID, shifted.mapped(0, 1 << 48))
    assert any("guest address" in p for p in problems)
    sev.snp_launch_start("vm2", 6)
    other = mirror_of(pa, 64 * MiB)
    assert "ASID 5's, not 6's" in sev.mirror_problems(6, other.mapped(0, 1 << 48))[0]


# ----- determinism -----------------------------------------------------------------------------


def _run() -> str:
    w = World()
    sev, pa = bound(w)
    mirror = mirror_of(pa, 64 * MiB)
    sev.tio_dma(BDF, mirror, 0, 8, True, b"12345678")
    sev.rmp_make_shared(pa, PAGE)
    sev.mirror_matches(ASID, mirror.mapped(0, 1 << 48))
    sev.tio_tdi_unbind(BDF)
    return w.sched.log.text()


def test_the_event_log_is_deterministic():
    a, b = _run(), _run()
    assert a == b
    assert "sev.rmpupdate" in a and "before=shared after=asid5" in a
    assert "VIOLATION.rmp-mirror" in a
