"""The platform TSM drivers (kernel/pci/tsm/{tdx_connect,sev_tio,cca}.py) over the firmware
models: connect + bind the GPU to a cVM, the TDI locked then RUN on the guest's accept, host
CPU access to its private MMIO a violation, unbind in each platform's order returning the MMIO
to the host, firmware refusals as the mapped errno changing nothing (a fail_nth sweep of bind),
and a VFIO FLR while bound putting the TDI in ERROR."""

from __future__ import annotations

import errno

import pytest

from passthru import kapi
from passthru.host.sim import SimHost
from passthru.hw.tdisp import TdiState
from passthru.sim import Scheduler
from passthru.uapi import kvm as K

BAR0 = 0xE000_0000
GPA = 1 << 32
PROFILES = ["rfc-tdx-connect", "rfc-sev-tio", "rfc-cca"]
UNBIND_STEPS = {
    "rfc-tdx-connect": ["tdi-stop", "mmio-unmap", "dmar-block", "dmar-remove", "devif-remove"],
    "rfc-sev-tio": ["tio-tdi-unbind", "rmp-make-shared"],
    "rfc-cca": ["vdev-unlock", "rtt-dev-unmap", "vdev-destroy", "dev-granule-undelegate",
                "vdev-granule"],
}
FIRMWARE_UNBIND = {  # the firmware's own calls, in order
    "rfc-tdx-connect": ("tdx", ["devif.request", "mmio.block", "mem.track", "mmio.unmap",
                                "dmar.block", "dmar.remove", "devif.remove", "mng.destroy"]),
    "rfc-sev-tio": ("sev", ["tio-unbind", "rmpupdate-shared", "decommission"]),
    "rfc-cca": ("rmm", ["vdev.unlock", "rtt.dev-unmap", "vdev.destroy",
                        "dev-granule.undelegate", "granule.undelegate", "rtt.destroy",
                        "realm.destroy", "granule.undelegate", "granule.undelegate"]),
}


def host(profile: str, **kw) -> SimHost:
    h = SimHost(profile, log=True, **kw)
    kapi.pci_dev(h, "gpu0").cfg_write(0x04, 2, kapi.PCI_COMMAND_MEMORY)  # BAR decoding on
    return h


def cvm(h: SimHost) -> int:
    return h.ioctl(h.open("/dev/kvm", 2), K.KVM_CREATE_VM, kapi.cvm_type(h))


def assign(h: SimHost) -> int:
    fd = cvm(h)
    kapi.tsm_connect(h, "gpu0")
    kapi.tsm_bind(h, "gpu0", fd, 0x10)
    kapi.tsm_map_private_mmio(h, "gpu0", GPA)
    return fd


def kinds(h: SimHost) -> set[str]:
    return {v.kind for v in h.sched.violations}


def fw_state(h: SimHost) -> tuple:
    fw = kapi.platform_tsm_of(h).fw
    tables = [n for n in ("devifs", "dmar", "tds", "pamt", "mmiomt", "tdis", "guests", "rmp",
                          "sdt", "vdevs", "realms", "pdevs", "granules", "dev_granules")
              if hasattr(fw, n)]
    return tuple((n, sorted(map(repr, getattr(fw, n)))) for n in tables)


@pytest.mark.parametrize("profile", PROFILES)
def test_bind_lock_accept_run_and_the_host_is_refused(profile: str) -> None:
    h = host(profile)
    gpu = kapi.pci_dev(h, "gpu0")
    fd = cvm(h)
    kapi.tsm_connect(h, "gpu0")
    kapi.tsm_bind(h, "gpu0", fd, 0x10)
    assert gpu.tdi.tdi_state == TdiState.CONFIG_LOCKED
    assert kapi.platform_tsm_of(h).core.bound(gpu).priv.report.mmio_ranges  # report fetched
    gpu.mmio_read(0, 0, 4, who="cpu:vmm")  # locked: the device refuses the host
    assert kinds(h) == {"tdi-private-mmio"}
    h.sched.violations.clear()
    maps = kapi.tsm_map_private_mmio(h, "gpu0", GPA)
    assert [(m.gpa, m.pa, m.size) for m in maps] == [(GPA, BAR0, 256 << 20)]
    kapi.tsm_guest_accept(h, "gpu0")
    assert gpu.tdi.tdi_state == TdiState.RUN
    assert h.kernel.phys.read(BAR0, 4, "cpu:vmm") == b"\xff" * 4  # physical truth refuses
    assert kinds(h) == {"physical"}
    assert "pci_tsm: gpu0 still bound to vm1 as TDI 0x10" in h.leaks()


@pytest.mark.parametrize("profile", PROFILES)
def test_unbind_in_the_firmware_order_returns_the_mmio(profile: str) -> None:
    h = host(profile)
    gpu = kapi.pci_dev(h, "gpu0")
    assign(h)
    kapi.tsm_guest_accept(h, "gpu0")
    start = len(h.sched.log.events)
    kapi.tsm_unbind(h, "gpu0")
    new = h.sched.log.events[start:]
    steps = [dict(e.args)["step"] for e in new if e.subsystem == "tsm"
             and e.event == "unbind-step"]
    assert steps == UNBIND_STEPS[profile]
    sub, calls = FIRMWARE_UNBIND[profile]
    assert [e.event for e in new if e.subsystem == sub] == calls
    assert not [e for e in new if e.event == "unbind-error"]
    assert gpu.tdi.tdi_state == TdiState.CONFIG_UNLOCKED
    assert not h.kernel.phys.mmio_claims.any_in(BAR0, BAR0 + (256 << 20))
    gpu.mmio_write(0, 0, 4, 0x1234, who="cpu:vmm")  # the host's again: no violation
    h.kernel.phys.read(BAR0, 4, "cpu:vmm")
    assert not h.sched.violations
    kapi.tsm_disconnect(h, "gpu0")
    assert all(not rows for _, rows in fw_state(h)), fw_state(h)
    assert all("kvm" in leak for leak in h.leaks())


@pytest.mark.parametrize("profile", PROFILES)
def test_a_wrong_firmware_order_is_eio_and_changes_nothing(profile: str) -> None:
    h = host(profile)
    assign(h)
    kapi.tsm_guest_accept(h, "gpu0")
    drv = kapi.platform_tsm_of(h)
    bdf = kapi.pci_dev(h, "gpu0").func.bdf
    before = fw_state(h)
    wrong = {  # a teardown step before the one the firmware wants first
        "rfc-tdx-connect": lambda: drv.call(drv.fw.dmar_block, bdf),  # before STOP
        "rfc-sev-tio": lambda: drv.call(drv.fw.snp_decommission, 1),  # before TIO unbind
        "rfc-cca": lambda: drv.call(drv.fw.vdev_destroy, bdf),  # before VDEV_UNLOCK
    }[profile]
    with pytest.raises(OSError) as ei:
        wrong()
    assert ei.value.errno == errno.EIO
    assert fw_state(h) == before
    assert kapi.pci_dev(h, "gpu0").tdi.tdi_state == TdiState.RUN


@pytest.mark.parametrize("profile", PROFILES)
def test_bind_fail_nth_sweep_maps_errnos_and_changes_nothing(profile: str) -> None:
    """Fail each fault point of connect+bind in turn: the failing call raises the mapped
    errno (TDX_OPERAND_BUSY EBUSY, an allocation ENOMEM, any other refusal EIO) and leaves
    the device, the TSM core, the firmware and physical memory as they were."""
    expect = {"tdx-busy": errno.EBUSY, "alloc_pages": errno.ENOMEM}
    seen: set[int] = set()
    for nth in range(1, 40):
        h = SimHost(profile, sched=Scheduler(fail_nth={nth}))
        fd = cvm(h)
        kapi.tsm_connect(h, "gpu0") if profile != "rfc-cca" else None
        base = (fw_state(h), h.kernel.phys.allocated_bytes(), sorted(kapi.tsm_of(h).tsm))
        try:
            if profile == "rfc-cca":
                kapi.tsm_connect(h, "gpu0")
                base = (fw_state(h), h.kernel.phys.allocated_bytes(),
                        sorted(kapi.tsm_of(h).tsm))
            kapi.tsm_bind(h, "gpu0", fd, 0x10)
        except OSError as e:
            failed = h.sched.faults_failed[-1][1]
            assert e.errno == expect.get(failed, errno.EIO), (nth, failed, e)
            seen.add(e.errno)
            gpu = kapi.pci_dev(h, "gpu0")
            assert gpu.tdi.tdi_state == TdiState.CONFIG_UNLOCKED
            assert kapi.tsm_of(h).bound(gpu) is None
            now = (fw_state(h), h.kernel.phys.allocated_bytes(), sorted(kapi.tsm_of(h).tsm))
            if kapi.tsm_of(h).connected(gpu):  # the failure was in bind, not in connect
                assert now == base, nth
            assert not h.sched.violations, nth
            continue
        if not h.sched.faults_failed:
            break  # past the last fault point: the sweep is complete
    else:
        pytest.fail("bind has more than 40 fault points")
    assert errno.EIO in seen or errno.ENOMEM in seen
    if profile == "rfc-tdx-connect":
        assert errno.EBUSY in seen


@pytest.mark.parametrize("profile", PROFILES)
def test_vfio_flr_while_bound_puts_the_tdi_in_error_and_unbind_recovers(profile: str) -> None:
    h = host(profile)
    gpu = kapi.pci_dev(h, "gpu0")
    assign(h)
    kapi.tsm_guest_accept(h, "gpu0")
    from passthru.kernel.vfio.pci.vfio_pci import vfio_pci_bind
    # VFIO_DEVICE_RESET: an FLR the TSM was not told about
    vfio_pci_bind(h.kernel, "gpu0").pci_try_reset_function()
    assert gpu.tdi.tdi_state == TdiState.ERROR
    why = [dict(e.args)["why"] for e in h.sched.log.events
           if e.subsystem == "tdisp" and dict(e.args).get("new") == "ERROR"]
    assert why == ["mse-clear"]  # vfio disables decoding before it resets: ERROR already
    before = fw_state(h)
    with pytest.raises(OSError) as ei:  # the guest's accept again: the device says no
        kapi.tsm_guest_accept(h, "gpu0")
    assert ei.value.errno == errno.EIO
    if profile != "rfc-cca":  # the RMM moves its VDEV to ERROR on a TDISP error (as TF-RMM)
        assert fw_state(h) == before
    kapi.tsm_unbind(h, "gpu0")  # STOP leaves ERROR: the teardown completes
    assert gpu.tdi.tdi_state == TdiState.CONFIG_UNLOCKED
    assert not h.kernel.phys.mmio_claims.any_in(BAR0, BAR0 + (256 << 20))


def test_two_functions_share_one_cvm_context() -> None:
    from tests.unit.test_pci_tsm_core import three_function_gpu
    h = SimHost("rfc-tdx-connect", machine=three_function_gpu())
    fd = cvm(h)
    kapi.tsm_connect(h, "gpu0")
    kapi.tsm_bind(h, "gpu0", fd, 1)
    kapi.tsm_bind(h, "gpu1", fd, 2)
    drv = kapi.platform_tsm_of(h)
    assert [c.users for c in drv.cvms.values()] == [2]
    kapi.tsm_disconnect(h, "gpu0")
    assert not drv.cvms and not drv.fw.tds and not drv.fw.devifs
