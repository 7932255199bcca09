"""The Arm CCA RMM as physical truth (hw/secure/cca.py): granule states as extents, realms and
their stage-2, device assignment (PDEV, VDEV, device memory) where the RMM owns the device's
secure mappings and stream table entry and the host sees none of them, and an SMMU VMID that
is not KVM's. Host CPU and normal-domain DMA to realm memory and realm device memory are
``physical`` violations. Model-only."""

from __future__ import annotations

from typing import Any

import pytest
from secure_world import BAR0, BAR_SIZE, BDF, PAGE, GiB, MiB, World

from passthru.hw import Owner
from passthru.hw import tdisp as t
from passthru.hw.secure.cca import Granule, RmiError, Rmm
from passthru.hw.tdisp import TdiState

MMIO_IPA = 0x10_0000_0000


def status(call: Any, *a: Any, **kw: Any) -> str:
    with pytest.raises(RmiError) as e:
        call(*a, **kw)
    return e.value.status


def snapshot(w: World, rmm: Rmm) -> tuple[object, ...]:
    return (list(rmm.granules), list(rmm.dev_granules), dict(rmm.realms),
            {k: list(v) for k, v in rmm.rtt.items()}, dict(rmm.pdevs), dict(rmm.vdevs),
            dict(rmm.ste), list(w.phys.owners), list(w.phys.mmio_claims), w.tdi.tdi_state)


def delegated(w: World, rmm: Rmm, size: int, owner: str = "kvm:realm") -> int:
    pa, _ = w.ram(size, owner)
    rmm.granule_delegate(pa, size)
    return pa


def realm(w: World, size: int = 64 * MiB, name: str = "realm1", vmid: int = 7,
          rmm: Rmm | None = None) -> tuple[Rmm, int]:
    rmm = rmm or Rmm(w.sched, w.phys)
    rmm.realm_create(name, delegated(w, rmm, PAGE), vmid)
    rmm.rtt_create(name, delegated(w, rmm, PAGE))
    data = delegated(w, rmm, size, f"gmem:{name}")
    rmm.data_create(name, data, 0, size)
    return rmm, data


def assigned(w: World, rmm: Rmm, start: bool = True) -> None:
    """The TDI bound to realm1 as a VDEV, locked, its MMIO delegated and mapped, started."""
    rmm.pdev_create(BDF, delegated(w, rmm, PAGE))
    rmm.vdev_create("realm1", BDF, delegated(w, rmm, PAGE), w.tdi)
    rmm.vdev_lock(BDF)
    rmm.dev_granule_delegate(BAR0, BAR_SIZE)
    rmm.rtt_dev_map("realm1", BDF, MMIO_IPA, BAR0, BAR_SIZE)
    if start:
        rmm.vdev_start(BDF)


# ----- granules and realms --------------------------------------------------------------------


def test_delegate_and_undelegate():
    w = World()
    rmm = Rmm(w.sched, w.phys)
    pa, _ = w.ram(4 * PAGE, "kvm:realm")
    w.phys.write(pa, b"old", "kernel")
    rmm.granule_delegate(pa, 4 * PAGE)
    assert rmm.granule(pa) == "DELEGATED" and len(rmm.granules) == 1
    w.phys.read(pa, 3, "kernel")
    assert "owned by kvm:realm (rmm:delegated)" in w.violations()[0]
    w.clear()
    before = snapshot(w, rmm)
    assert status(rmm.granule_delegate, pa, PAGE) == "RMI_ERROR_INPUT"  # delegated already
    assert status(rmm.granule_delegate, 40 * GiB, PAGE) == "RMI_ERROR_INPUT"  # not the host's
    assert status(rmm.granule_delegate, pa + 1, PAGE) == "RMI_ERROR_INPUT"
    assert status(rmm.granule_undelegate, pa, 8 * PAGE) == "RMI_ERROR_INPUT"
    assert snapshot(w, rmm) == before
    rmm.granule_undelegate(pa, 4 * PAGE)
    assert rmm.granule(pa) == "UNDELEGATED" and w.phys.owner_of(pa) == Owner("kvm:realm")
    assert w.phys.read(pa, 3, "kernel") == bytes(3) and w.violations() == []  # scrubbed


def test_a_one_gib_realm_is_one_extent_and_only_the_realm_reaches_it():
    w = World()
    rmm, data = realm(w, size=GiB)
    assert rmm.granule(data) == "DATA" and len(rmm.rtt["realm1"]) == 1
    assert [g for _, _, g in rmm.granules].count(Granule("DATA", "realm1")) == 1
    w.phys.write(data, b"realm", "vcpu:realm1.0")
    assert w.phys.read(data, 5, "vcpu:realm1.1") == b"realm" and w.violations() == []
    assert w.phys.read(data, 5, "cpu:qemu") == bytes(5)
    w.host_dma(0x1000, data, PAGE)
    msgs = w.violations()
    assert len(msgs) == 2 and all("(rmm:data:realm1)" in m for m in msgs)
    assert rmm.rtt_read_entry("realm1", 0x1234) == "ASSIGNED"
    assert rmm.rtt_read_entry("realm1", 2 * GiB) == "UNASSIGNED"


def test_realm_create_and_destroy_refusals():
    w = World()
    rmm, data = realm(w)
    rd2 = delegated(w, rmm, PAGE)
    before = snapshot(w, rmm)
    assert status(rmm.realm_create, "realm2", rd2, 7) == "RMI_ERROR_INPUT"  # KVM's VMID taken
    assert status(rmm.realm_create, "realm1", rd2, 8) == "RMI_ERROR_INPUT"
    assert status(rmm.realm_create, "realm2", data, 8) == "RMI_ERROR_INPUT"  # not DELEGATED
    assert status(rmm.realm_destroy, "realm1") == "RMI_ERROR_REALM"  # it still has data
    assert status(rmm.data_create, "realm1", rd2, 0, PAGE) == "RMI_ERROR_RTT"  # IPA taken
    assert snapshot(w, rmm) == before
    rmm.data_destroy("realm1", 0, 64 * MiB)
    assert rmm.granule(data) == "DELEGATED"
    w.phys.read(data, 1, "cpu:qemu")  # delegated is still not the host's
    assert len(w.violations()) == 1
    rtt = next(s for s, _, g in rmm.granules if g.state == "RTT")
    rmm.rtt_destroy("realm1", rtt)
    rmm.realm_destroy("realm1")
    assert "realm1" not in rmm.realms and rmm.granule(rtt) == "DELEGATED"


def test_recs_and_rtts():
    w = World()
    rmm = Rmm(w.sched, w.phys)
    rmm.realm_create("realm1", delegated(w, rmm, PAGE), 1)
    data = delegated(w, rmm, PAGE)
    assert status(rmm.data_create, "realm1", data, 0, PAGE) == "RMI_ERROR_RTT"  # no RTT yet
    rec = delegated(w, rmm, PAGE)
    rmm.rec_create("realm1", rec)
    assert rmm.granule(rec) == "REC"
    assert status(rmm.realm_destroy, "realm1") == "RMI_ERROR_REALM"
    assert status(rmm.rec_destroy, "realm1", data) == "RMI_ERROR_INPUT"  # not a REC
    rmm.rec_destroy("realm1", rec)
    rmm.realm_destroy("realm1")
    assert status(rmm.rec_create, "realm1", rec) == "RMI_ERROR_INPUT"  # no such realm


# ----- device assignment -----------------------------------------------------------------------


def test_assignment_the_rmm_owns_the_device_mappings_and_the_host_sees_none():
    w = World()
    rmm, data = realm(w)
    assigned(w, rmm)
    assert w.tdi.tdi_state == TdiState.RUN and rmm.vdevs[BDF].state == "STARTED"
    assert rmm.granule(BAR0) == "DEV_MAPPED"
    assert rmm.rtt_read_entry("realm1", MMIO_IPA) == "ASSIGNED_DEV"  # a state, no address
    # The device's DMA into the realm goes through the RMM's stream table entry: the host's
    # IOMMU domain for the device holds nothing.
    assert len(w.dom.table) == 0  # type: ignore[arg-type]
    assert rmm.smmu_dma(BDF, 0x100, 4, True, b"dma!") == b""
    assert w.phys.read(data + 0x100, 4, "vcpu:realm1.0") == b"dma!"
    assert w.violations() == []
    # The realm reaches its device memory; the host does not.
    w.phys.write(BAR0, b"\x09", "vcpu:realm1.0")
    assert w.bar.regs[BAR0] == 9 and w.violations() == []
    assert w.phys.read(BAR0, 1, "cpu:qemu") == b"\xff"
    w.host_dma(0x2000, BAR0, PAGE)
    msgs = w.violations()
    assert len(msgs) == 2 and all("owned by tdi:0000:01:00.0 (rmm:dev:realm1)" in m
                                  for m in msgs)


def test_trusted_dma_needs_a_started_vdev_and_data():
    w = World()
    rmm, _ = realm(w)
    assigned(w, rmm, start=False)
    assert rmm.smmu_dma(BDF, 0, 4, False) is None  # LOCKED: no T=1 DMA
    rmm.vdev_start(BDF)
    assert rmm.smmu_dma(BDF, MMIO_IPA, 4, False) is None  # device memory is no DMA target
    assert rmm.smmu_dma(BDF, 1 << 40, 4, False) is None
    assert rmm.smmu_dma("0000:09:00.0", 0, 4, False) is None
    w.tdi.on_flr()  # the TDI leaves RUN
    assert rmm.smmu_dma(BDF, 0, 4, False) is None
    faults = [e for e in w.sched.log.events if e.subsystem == "rmm" and e.event == "dma-fault"]
    assert len(faults) == 5


def test_device_refusals_change_nothing():
    w = World()
    rmm, data = realm(w)
    vdev_pa = delegated(w, rmm, PAGE)
    before = snapshot(w, rmm)
    assert status(rmm.vdev_create, "realm1", BDF, vdev_pa, w.tdi) == "RMI_ERROR_INPUT"  # no PDEV
    assert status(rmm.rtt_dev_map, "realm1", BDF, MMIO_IPA, BAR0, PAGE) == "RMI_ERROR_INPUT"
    assert snapshot(w, rmm) == before
    rmm.pdev_create(BDF, delegated(w, rmm, PAGE))
    assert status(rmm.pdev_create, BDF, delegated(w, rmm, PAGE)) == "RMI_ERROR_INPUT"
    rmm.vdev_create("realm1", BDF, vdev_pa, w.tdi)
    assert status(rmm.vdev_create, "realm1", BDF, delegated(w, rmm, PAGE), w.tdi) \
        == "RMI_ERROR_DEVICE"
    assert status(rmm.pdev_destroy, BDF) == "RMI_ERROR_DEVICE"
    assert status(rmm.vdev_start, BDF) == "RMI_ERROR_DEVICE"  # UNLOCKED
    rmm.dev_granule_delegate(BAR0, BAR_SIZE)
    assert status(rmm.dev_granule_delegate, BAR0, PAGE) == "RMI_ERROR_INPUT"
    assert status(rmm.dev_granule_delegate, data, PAGE) == "RMI_ERROR_INPUT"  # RAM, not MMIO
    before = snapshot(w, rmm)
    assert status(rmm.rtt_dev_map, "realm1", BDF, MMIO_IPA, BAR0, PAGE) == "RMI_ERROR_DEVICE"
    assert snapshot(w, rmm) == before
    rmm.vdev_lock(BDF)
    before = snapshot(w, rmm)
    assert status(rmm.rtt_dev_map, "realm1", BDF, MMIO_IPA, BAR0 - PAGE, 2 * PAGE) \
        == "RMI_ERROR_INPUT"  # not all TEE MMIO of the TDI
    assert status(rmm.rtt_dev_map, "realm1", BDF, 0, BAR0, PAGE) == "RMI_ERROR_RTT"  # IPA taken
    assert status(rmm.vdev_destroy, BDF) == "RMI_ERROR_DEVICE"  # LOCKED
    assert snapshot(w, rmm) == before


def test_a_tdisp_error_puts_the_vdev_in_error_and_only_unlock_leaves():
    w = World()
    rmm, _ = realm(w)
    rmm.pdev_create(BDF, delegated(w, rmm, PAGE))
    rmm.vdev_create("realm1", BDF, delegated(w, rmm, PAGE), w.tdi)
    w.tdi.handle(t.encode(t.LockInterface(w.tdi.function_id)))  # locked behind the RMM's back
    assert status(rmm.vdev_lock, BDF) == "RMI_ERROR_DEVICE"  # INVALID_INTERFACE_STATE
    assert rmm.vdevs[BDF].state == "ERROR"
    assert status(rmm.vdev_start, BDF) == "RMI_ERROR_DEVICE"
    rmm.vdev_unlock(BDF)
    assert rmm.vdevs[BDF].state == "UNLOCKED" and w.tdi.tdi_state == TdiState.CONFIG_UNLOCKED


def test_teardown_gives_the_mmio_back_only_after_undelegate():
    w = World()
    rmm, _ = realm(w)
    assigned(w, rmm)
    rmm.vdev_unlock(BDF)
    rmm.rtt_dev_unmap("realm1", MMIO_IPA, BAR_SIZE)
    assert status(rmm.rtt_dev_unmap, "realm1", MMIO_IPA, BAR_SIZE) == "RMI_ERROR_RTT"
    rmm.vdev_destroy(BDF)
    assert BDF not in rmm.ste and rmm.granule(BAR0) == "DEV_DELEGATED"
    w.phys.read(BAR0, 1, "cpu:qemu")
    assert "(rmm:dev-delegated)" in w.violations()[0]
    w.clear()
    rmm.dev_granule_undelegate(BAR0, BAR_SIZE)
    w.phys.write(BAR0, b"\x01", "cpu:qemu")
    assert w.violations() == [] and w.bar.regs[BAR0] == 1
    rmm.pdev_destroy(BDF)
    assert rmm.pdevs == {}


def test_dev_undelegate_of_mapped_memory_is_refused():
    w = World()
    rmm, _ = realm(w)
    assigned(w, rmm)
    before = snapshot(w, rmm)
    assert status(rmm.dev_granule_undelegate, BAR0, BAR_SIZE) == "RMI_ERROR_INPUT"
    assert snapshot(w, rmm) == before


# ----- VMIDs ----------------------------------------------------------------------------------


def test_the_smmu_vmid_is_the_rmms_not_kvms():
    w = World()
    rmm, _ = realm(w, name="realm1", vmid=7)
    realm(w, name="realm2", vmid=3, rmm=rmm)
    assert (rmm.realms["realm1"].vmid, rmm.smmu_vmid("realm1")) == (7, 1)
    assert (rmm.realms["realm2"].vmid, rmm.smmu_vmid("realm2")) == (3, 2)
    assigned(w, rmm)
    assert rmm.ste[BDF] == ("realm1", 1)
    assert rmm.smmu_vmid("nope") is None


def test_with_a_shared_vmid_the_smmu_uses_kvms():
    w = World()
    rmm = Rmm(w.sched, w.phys, shared_vmid=True)
    rmm.realm_create("realm9", delegated(w, rmm, PAGE), 42)
    assert rmm.smmu_vmid("realm9") == 42


# ----- determinism ----------------------------------------------------------------------------


def _run() -> str:
    w = World()
    rmm, _ = realm(w)
    assigned(w, rmm)
    rmm.smmu_dma(BDF, 0, 8, True, b"abcdefgh")
    w.phys.read(BAR0, 4, "cpu:qemu")
    rmm.vdev_unlock(BDF)
    rmm.rtt_dev_unmap("realm1", MMIO_IPA, BAR_SIZE)
    rmm.vdev_destroy(BDF)
    rmm.dev_granule_undelegate(BAR0, BAR_SIZE)
    return w.sched.log.text()


def test_the_event_log_is_deterministic():
    a, b = _run(), _run()
    assert a == b
    assert "rmm.rtt.dev-map" in a and "before=DEV_DELEGATED after=DEV_MAPPED" in a
