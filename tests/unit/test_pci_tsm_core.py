"""The PCI TSM core (kernel/pci/tsm/core.py, drivers/pci/tsm.c): every errno of connect,
disconnect, bind, unbind and guest_req, disconnect unbinding in reverse order, the lock rules
asserted, refused calls changing nothing, and determinism."""

from __future__ import annotations

import errno

import pytest

from passthru import kapi
from passthru.host.sim import SimHost
from passthru.hw import tdisp
from passthru.hw.machine import Machine, PciDesc
from passthru.kernel.pci.tsm.core import (
    PCI_TSM_REQ_DEBUG_READ,
    PCI_TSM_REQ_DEBUG_WRITE,
    PCI_TSM_REQ_INFO,
    PCI_TSM_REQ_STATE_CHANGE,
    PciTdi,
    PciTsmOps,
)
from passthru.uapi import kvm as K

MiB = 1 << 20


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as ei:
        fn(*args)
    return ei.value.errno


def vm(h: SimHost, vm_type: int = K.KVM_X86_TDX_VM) -> int:
    return h.ioctl(h.open("/dev/kvm", 2), K.KVM_CREATE_VM, vm_type)


def lockdep(h: SimHost) -> list[str]:
    return [v.message for v in h.sched.violations if v.kind == "lockdep"]


def snapshot(h: SimHost) -> tuple:
    core = kapi.tsm_of(h)
    gpu = kapi.pci_dev(h, "gpu0")
    fw = kapi.platform_tsm_of(h).fw
    return (sorted(core.tsm.items()), sorted(core.tdi), gpu.tdi.tdi_state,
            sorted(fw.devifs), sorted(fw.tds), h.kernel.phys.allocated_bytes())


@pytest.fixture
def h() -> SimHost:
    return SimHost("rfc-tdx-connect", log=True)


# ----- connect / disconnect ---------------------------------------------------------------------
def test_platform_tsm_is_registered_from_the_profile(h: SimHost) -> None:
    core = kapi.tsm_of(h)
    assert [d.name for d in core.tsm_devs.values()] == ["tsm0"]
    assert kapi.platform_tsm_of(h).name == "tdx-connect"
    assert kapi.cvm_type(h) == K.KVM_X86_TDX_VM
    assert errno_of(kapi.platform_tsm_of, SimHost()) == errno.ENODEV


def test_connect_errnos(h: SimHost) -> None:
    assert errno_of(kapi.tsm_connect, h, "gpu0", "bogus") == errno.EINVAL
    assert errno_of(kapi.tsm_connect, h, "gpu0", "tsm7") == errno.ENXIO  # no such TSM
    assert errno_of(kapi.tsm_connect, h, "edu0", "tsm0") == errno.ENOENT  # not a TSM PF0
    kapi.tsm_connect(h, "gpu0")
    assert kapi.tsm_of(h).connected(kapi.pci_dev(h, "gpu0")) == "tsm0"
    assert errno_of(kapi.tsm_connect, h, "gpu0", "tsm0") == errno.EBUSY


class Devsec(PciTsmOps):
    name = "devsec"
    link = False


def test_connect_to_a_devsec_tsm_is_enxio_and_bind_through_it_too(h: SimHost) -> None:
    dev = kapi.tsm_of(h).register(Devsec())
    assert dev.name == "tsm1"
    assert errno_of(kapi.tsm_connect, h, "gpu0", "tsm1") == errno.ENXIO
    assert kapi.tsm_of(h).connected(kapi.pci_dev(h, "gpu0")) is None


def test_disconnect_errnos(h: SimHost) -> None:
    assert errno_of(kapi.tsm_disconnect, h, "gpu0", "tsm0") == errno.ENXIO
    kapi.tsm_connect(h, "gpu0")
    assert errno_of(kapi.tsm_disconnect, h, "gpu0", "tsm1") == errno.EINVAL
    assert errno_of(kapi.tsm_disconnect, h, "edu0", "tsm0") == errno.ENOENT
    kapi.tsm_disconnect(h, "gpu0", "tsm0\n")  # sysfs_streq: a trailing newline is fine
    assert kapi.tsm_of(h).connected(kapi.pci_dev(h, "gpu0")) is None
    assert not kapi.tsm_of(h).pf0_locks


# ----- bind / unbind ---------------------------------------------------------------------------
def test_bind_errnos(h: SimHost) -> None:
    a, b = vm(h), vm(h)
    assert errno_of(kapi.tsm_bind, h, "gpu0", None, 1) == errno.EINVAL  # NULL kvm
    assert errno_of(kapi.tsm_bind, h, "gpu0", a, 1) == errno.EINVAL  # not connected
    kapi.tsm_connect(h, "gpu0")
    before = snapshot(h)
    assert errno_of(kapi.tsm_bind, h, "gpu0", vm(h, K.KVM_X86_DEFAULT_VM), 1) == errno.EINVAL
    assert snapshot(h) == before  # refused: nothing changed
    assert kapi.tsm_bind(h, "gpu0", a, 1) == 0
    bound = snapshot(h)
    assert kapi.tsm_bind(h, "gpu0", a, 1) == 0  # the same kvm: 0, nothing new
    assert snapshot(h) == bound
    assert errno_of(kapi.tsm_bind, h, "gpu0", b, 1) == errno.EBUSY
    assert snapshot(h) == bound


def test_unbind_always_succeeds(h: SimHost) -> None:
    kapi.tsm_unbind(h, "gpu0")  # not connected
    kapi.tsm_connect(h, "gpu0")
    kapi.tsm_unbind(h, "gpu0")  # nothing bound
    kapi.tsm_bind(h, "gpu0", vm(h), 7)
    kapi.tsm_unbind(h, "gpu0")
    kapi.tsm_unbind(h, "gpu0")
    assert kapi.tsm_of(h).bound(kapi.pci_dev(h, "gpu0")) is None
    assert kapi.pci_dev(h, "gpu0").tdi.tdi_state == tdisp.TdiState.CONFIG_UNLOCKED
    assert not kapi.platform_tsm_of(h).fw.devifs and not kapi.platform_tsm_of(h).fw.tds


def test_guest_req_errnos(h: SimHost) -> None:
    gpu = kapi.pci_dev(h, "gpu0")
    state = tdisp.GetDeviceInterfaceState(gpu.tdi.function_id)
    for scope in (PCI_TSM_REQ_DEBUG_READ, PCI_TSM_REQ_DEBUG_WRITE, 4):
        assert errno_of(kapi.tsm_guest_req, h, "gpu0", scope, state) == errno.EINVAL
    assert errno_of(kapi.tsm_guest_req, h, "gpu0", PCI_TSM_REQ_INFO, state) == errno.ENXIO
    kapi.tsm_connect(h, "gpu0")
    assert errno_of(kapi.tsm_guest_req, h, "gpu0", PCI_TSM_REQ_INFO, state) == errno.ENXIO
    kapi.tsm_bind(h, "gpu0", vm(h), 1)
    rsp = kapi.tsm_guest_req(h, "gpu0", PCI_TSM_REQ_INFO, state)
    assert rsp == tdisp.DeviceInterfaceState(gpu.tdi.function_id,
                                             tdisp.TdiState.CONFIG_LOCKED)
    before = snapshot(h)
    assert errno_of(kapi.tsm_guest_req, h, "gpu0", PCI_TSM_REQ_INFO, b"\x10") == errno.EINVAL
    start = tdisp.StartInterface(gpu.tdi.function_id)
    assert errno_of(kapi.tsm_guest_req, h, "gpu0", PCI_TSM_REQ_INFO, start) == errno.EINVAL
    assert errno_of(kapi.tsm_guest_req, h, "gpu0", PCI_TSM_REQ_STATE_CHANGE,
                    state) == errno.EINVAL
    assert snapshot(h) == before


# ----- disconnect: every TDI unbound, in reverse order -------------------------------------------
class Recorder(PciTsmOps):
    """A link TSM that records what the core asks of it."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def probe(self, pdev):
        self.calls.append(("probe", pdev.name))
        return pdev.name

    def remove(self, pdev, ctx):
        self.calls.append(("remove", pdev.name))

    def connect(self, pdev):
        self.calls.append(("connect", pdev.name))

    def disconnect(self, pdev):
        self.calls.append(("disconnect", pdev.name))

    def bind(self, pdev, kvm, tdi_id):
        self.calls.append(("bind", pdev.name))
        return tdi_id

    def unbind(self, tdi: PciTdi) -> None:
        self.calls.append(("unbind", tdi.pdev.name))

    def guest_req(self, tdi, scope, req):
        return req


def three_function_gpu() -> Machine:
    fns = tuple(PciDesc(f"gpu{i}", "gpu", f"0000:01:00.{i}", ((0, 0xE000_0000 - i * 256 * MiB,
                                                              256 * MiB),),
                        iommu="iommu0", root_port="rp1") for i in range(3))
    return Machine(devices=tuple(d.name for d in fns), iommus=("iommu0",), pci=fns)


def test_disconnect_unbinds_every_tdi_in_reverse_order() -> None:
    h = SimHost("linux-7.1", machine=three_function_gpu(), log=True)
    rec = Recorder()
    tsm = kapi.tsm_of(h).register(rec)
    kapi.tsm_connect(h, "gpu0", tsm.name)
    assert rec.calls == [("probe", "gpu0"), ("connect", "gpu0"), ("probe", "gpu1"),
                         ("probe", "gpu2")]
    fd = vm(h, K.KVM_X86_DEFAULT_VM)  # the recorder takes any VM
    for name in ("gpu1", "gpu0", "gpu2"):
        kapi.tsm_bind(h, name, fd, 1)
    rec.calls.clear()
    kapi.tsm_disconnect(h, "gpu0", tsm.name)
    assert rec.calls == [("unbind", "gpu2"), ("unbind", "gpu1"), ("unbind", "gpu0"),
                         ("remove", "gpu2"), ("remove", "gpu1"), ("disconnect", "gpu0"),
                         ("remove", "gpu0")]
    core = kapi.tsm_of(h)
    assert not core.tdi and not core.tsm
    events = [(e.event, dict(e.args).get("dev")) for e in h.sched.log.events
              if e.subsystem == "tsm" and e.event in ("unbind", "disconnect")]
    assert events == [("unbind", "gpu2"), ("unbind", "gpu1"), ("unbind", "gpu0"),
                      ("disconnect", "gpu0")]
    assert not lockdep(h)


def test_a_subfunction_binds_under_its_pf0_lock_and_cannot_connect() -> None:
    h = SimHost("linux-7.1", machine=three_function_gpu())
    tsm = kapi.tsm_of(h).register(Recorder())
    assert errno_of(kapi.tsm_connect, h, "gpu1", tsm.name) == errno.ENOENT
    assert errno_of(kapi.tsm_bind, h, "gpu1", vm(h, 0), 1) == errno.EINVAL
    kapi.tsm_connect(h, "gpu0", tsm.name)
    kapi.tsm_bind(h, "gpu1", vm(h, 0), 1)
    assert kapi.tsm_of(h).tsm["gpu1"].dsm == "gpu0"


# ----- lock rules ---------------------------------------------------------------------------------
def test_platform_bind_without_the_function0_lock_trips_lockdep(h: SimHost) -> None:
    kapi.tsm_connect(h, "gpu0")
    drv = kapi.platform_tsm_of(h)
    gpu = kapi.pci_dev(h, "gpu0")
    assert not lockdep(h)
    kvm = kapi.vm_of(h, vm(h))
    drv.bind(gpu, kvm, 1)  # straight into the driver: neither pci_tsm_rwsem nor the PF0 lock
    msgs = lockdep(h)
    assert any("pci_tsm_rwsem" in m and "tdx-connect bind" in m for m in msgs)
    assert any("gpu0.tsm_pf0.lock" in m for m in msgs)


def test_core_bookkeeping_outside_its_locks_trips_lockdep(h: SimHost) -> None:
    core = kapi.tsm_of(h)
    core._set_tsm("gpu0", None, "test")  # pdev->tsm without the rwsem held for write
    assert any("lockdep_assert_held_write(pci_tsm_rwsem)" in m for m in lockdep(h))
    h.sched.violations.clear()
    kapi.tsm_connect(h, "gpu0")
    with core.rwsem.read():  # the rwsem but not the PF0 lock
        core._set_tdi("gpu0", "gpu0", None, "test")
    assert lockdep(h) and all("gpu0.tsm_pf0.lock" in m for m in lockdep(h))


def test_the_platform_lock_guards_the_cvm_table(h: SimHost) -> None:
    drv = kapi.platform_tsm_of(h)
    drv._cvm_get(kapi.vm_of(h, vm(h)))
    assert any("tdx-connect.lock" in m for m in lockdep(h))


# ----- determinism --------------------------------------------------------------------------------
def run_once() -> list[tuple]:
    h = SimHost("rfc-tdx-connect", log=True)
    fd = vm(h)
    kapi.tsm_connect(h, "gpu0")
    kapi.tsm_bind(h, "gpu0", fd, 3)
    kapi.tsm_map_private_mmio(h, "gpu0", 1 << 32)
    kapi.tsm_guest_accept(h, "gpu0")
    kapi.tsm_disconnect(h, "gpu0")
    return [(e.step, e.task, e.subsystem, e.event, e.args) for e in h.sched.log.events]


def test_event_log_is_deterministic() -> None:
    a, b = run_once(), run_once()
    assert a == b
    tsm = [ev for _, _, sub, ev, _ in a if sub == "tsm"]
    assert tsm[:3] == ["register", "connect", "cvm-create"]
    assert tsm[-2:] == ["unbind", "disconnect"]
