"""What the platform TSM drivers share (the RFC drivers' common shape: drivers/virt/coco/
tdx-host/ for TDX Connect, drivers/crypto/ccp/sev-dev-tsm.c for SEV-TIO, drivers/virt/coco/
arm-cca-host/ for CCA), and which platform a machine has.

Which platform, as data (DESIGN.md contract 3): :data:`PLATFORMS` maps a profile's
``coco_platform`` ("tdx", "sev", "cca") to a :class:`Platform` — the secure firmware model
(hw/secure/) and the platform TSM driver class — which each driver module registers when it is
imported. At boot the static ``coco.firmware`` (:data:`secure_firmware`) is that firmware (None
on a machine without one) and the initcall :func:`pci_tsm_platform_init` registers the driver
with the TSM core (tsm_register), so ``tsm0`` is the platform TSM. The core has no ``if`` on
the platform; neither does anything else.

:class:`PlatformTsm` is a :class:`~.core.PciTsmOps` doing what the three have in common and
leaving the firmware calls to its subclass:

- ``probe`` accepts a function with a TDISP responder (``pdev.tdi``); ``bind`` refuses a VM
  whose type is not one of ``CVM_TYPES`` (EINVAL), then the subclass's ``_bind`` talks to the
  firmware, which speaks TDISP to the device (hw/tdi.py) — LOCK_INTERFACE, the interface
  report — and undoes its own steps when one fails (a refused bind changes nothing).
- The cVM's firmware context (a TD, an SNP guest, a realm): created at the first bind of a TDI
  to that VM and destroyed at the last unbind (:attr:`PlatformTsm.cvms`, a refcount).
  *Invented*: on real hosts KVM creates it with the VM (KVM_TDX_INIT_VM, SNP_LAUNCH_START,
  RMI_REALM_CREATE); kernel/kvm does not talk to the firmware yet, so the TSM driver stands in.
- Private MMIO: :meth:`PlatformTsm.map_private_mmio` maps the bound TDI's locked TEE MMIO into
  the cVM's secure stage-2 at a guest address (*stand-in* for KVM's fault on the private-MMIO
  memslot — tdh_mmio_map, rmp_make_private_mmio, RMI_RTT_DEV_MAP); unbind takes it out again
  in the platform's order before the MMIO goes back to the host.
- guest_req: the request is a TDISP message (hw/tdisp.py). INFO admits GET_VERSION,
  GET_CAPABILITIES, GET_DEVICE_INTERFACE_STATE and GET_DEVICE_INTERFACE_REPORT (answered from
  the device); STATE_CHANGE admits START_INTERFACE — the guest's accept: the subclass accepts
  the mapped MMIO and STARTs the TDI with the nonce *the firmware* kept (the guest's nonce is
  ignored) — and STOP_INTERFACE. Anything else, or a malformed message: EINVAL (invented: the
  RFCs' request formats are per platform).
- Firmware errors map to errnos as the RFC drivers do: the firmware's busy status
  (TDX_OPERAND_BUSY) EBUSY, every other refusal EIO; the message names the call and status.
- ``unbind`` never fails: a busy firmware is retried (:meth:`PlatformTsm.call_retrying`, up
  to BUSY_RETRIES tries); a firmware refusal during it is logged (``tsm``/``unbind-error``) and
  the rest of the teardown is skipped — what is left stays held by the firmware, a leak the
  teardown checks see (the RFC drivers WARN and leak the same way).

Locking: ``bind``/``unbind``/``guest_req`` run under pci_tsm_rwsem and the PF0 lock (asserted
at entry: :meth:`~.core.PciTsmCore.assert_tdi_ops_locked`). ``cvms`` is shared between PF0s
binding to one VM: the driver's own ``lock`` (a Mutex, asserted in ``_cvm_get``/``_cvm_put``).
``mmio`` (the private MMIO mapped per TDI) is written under the PF0 lock of its device.
Both are tracked dicts of immutable records.

Events (``tsm``): ``cvm-create``/``cvm-destroy`` (kvm), ``mmio-map`` (dev, gpa, pa, size),
``accept`` (dev), ``unbind-step`` (dev, step) for each step of the platform's unbind order, and
``unbind-error`` (dev, step, error). The firmware logs its own calls (``tdx``, ``sev``, ``rmm``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....hw import tdisp
from ....hw.physmem import Owner
from ....hw.secure import Firmware, FirmwareError
from ....sim.locks import Mutex
from ....sim.track import TrackedDict
from ...init import initcall, kernel_static
from ...lockdep_assert import lockdep_assert_held
from .core import PCI_TSM_REQ_INFO, PciTdi, PciTsmOps, pci_tsm, pci_tsm_register

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ....hw.tdi import Tdi
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm

PAGE = 4096
BUSY_RETRIES = 3  # tries of a busy firmware call on a teardown path (call_retrying)
INFO_REQUESTS = (tdisp.GetVersion, tdisp.GetCapabilities, tdisp.GetDeviceInterfaceState,
                 tdisp.GetDeviceInterfaceReport)


@dataclass(frozen=True)
class Platform:
    """A confidential-computing platform: its firmware model and its TSM driver."""

    name: str
    firmware: Callable[[Kernel], Firmware]
    driver: Callable[[Kernel], PlatformTsm]


PLATFORMS: dict[str, Platform] = {}


def register_platform(p: Platform) -> Platform:
    PLATFORMS[p.name] = p
    return p


def _platform(kernel: Kernel) -> Platform | None:
    name = kernel.profile.coco_platform
    if name is None:
        return None
    p = PLATFORMS.get(name)
    if p is None:
        raise ValueError(f"profile {kernel.profile.name}: unknown coco_platform {name!r} "
                         f"(known: {', '.join(sorted(PLATFORMS))})")
    return p


def _make_firmware(kernel: Kernel) -> Firmware | None:
    p = _platform(kernel)
    return None if p is None else p.firmware(kernel)


secure_firmware = kernel_static("coco.firmware", _make_firmware)


class _Driver:
    """The registered platform TSM driver (written at boot only)."""

    def __init__(self, kernel: Kernel) -> None:
        self.driver: PlatformTsm | None = None


platform_tsm_holder = kernel_static("pci.tsm.platform", _Driver)


def platform_tsm(kernel: Kernel) -> PlatformTsm | None:
    """The platform TSM driver of ``kernel`` (None without a coco platform)."""
    return platform_tsm_holder(kernel).driver


@initcall("device")  # module_init of the platform's TSM driver
def pci_tsm_platform_init(kernel: Kernel) -> None:
    p = _platform(kernel)
    if p is None:
        return
    drv = p.driver(kernel)
    platform_tsm_holder(kernel).driver = drv
    pci_tsm_register(kernel, drv)


@dataclass(frozen=True)
class Cvm:
    """The firmware context of one cVM (``handle``: TD name, ASID, realm) and its TDIs."""

    handle: Any
    users: int


@dataclass(frozen=True)
class MmioMap:
    """Private MMIO ``[pa, pa + size)`` of BAR ``bar`` mapped at ``gpa`` (accepted or not)."""

    gpa: int
    pa: int
    size: int
    bar: int


class PlatformTsm(PciTsmOps):
    """A platform TSM driver (see the module docstring); subclasses implement ``_cvm_create``,
    ``_cvm_destroy``, ``_bind``, ``_map``, ``_accept``, ``_stop``, ``_relay`` and
    ``_unbind``."""

    CVM_TYPES: tuple[int, ...] = ()
    FIRMWARE: type[Firmware] = Firmware

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.sched = kernel.sched
        self.phys = kernel.phys
        fw = secure_firmware(kernel)
        if not isinstance(fw, self.FIRMWARE):
            raise ValueError(f"{self.name}: the machine's firmware is {type(fw).__name__}, "
                             f"not {self.FIRMWARE.__name__}")
        self.fw = fw
        self.core = pci_tsm(kernel)
        self.lock = Mutex(self.sched, f"{self.name}.lock", f"{self.name}->lock")
        self.cvms: TrackedDict[str, Cvm] = TrackedDict(label=f"{self.name}.cvms")
        self.mmio: TrackedDict[str, tuple[MmioMap, ...]] = TrackedDict(
            label=f"{self.name}.mmio")

    # ----- firmware calls -----------------------------------------------------------------
    def fw_errno(self, e: FirmwareError) -> int:
        """The RFC drivers' mapping: the firmware's busy status EBUSY, anything else EIO."""
        return errno.EBUSY if e.status == self.fw.BUSY else errno.EIO

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A firmware call; a refusal becomes OSError(fw_errno) naming call and status."""
        try:
            return fn(*args)
        except FirmwareError as e:
            raise kerr(self.fw_errno(e), f"{self.name}: {e}") from e

    def call_retrying(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A firmware call on a teardown path: retried while the firmware answers busy, at
        most :data:`BUSY_RETRIES` tries (KVM's loop on TDX_OPERAND_BUSY; invented bound),
        then like :meth:`call`. Unbind must not give up on mere contention."""
        for attempt in range(1, BUSY_RETRIES + 1):
            try:
                return self.call(fn, *args)
            except OSError as e:
                if e.errno != errno.EBUSY or attempt == BUSY_RETRIES:
                    raise
                self.sched.emit("tsm", "busy-retry", call=getattr(fn, "__name__", "?"),
                                attempt=attempt)
        raise AssertionError("unreachable")

    def alloc_page(self, what: str, n: int = 1) -> list[tuple[int, int]]:
        return self.phys.alloc(n * PAGE, Owner(f"{self.name}:{what}"))

    def free_pages(self, pages: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> None:
        for s, e in pages:
            self.phys.release(s, e)

    @staticmethod
    def undo(*steps: Callable[[], Any]) -> None:
        """Best-effort rollback of a failed bind (each step's own refusal is ignored)."""
        for step in steps:
            try:
                step()
            except (OSError, FirmwareError):
                pass

    # ----- the cVM's firmware context -----------------------------------------------------
    def _cvm_get(self, kvm: Kvm) -> Any:
        lockdep_assert_held(self.lock, f"{self.name} cvm_get")
        cur = self.cvms.get(kvm.name)
        if cur is None:
            handle = self._cvm_create(kvm)
            self.sched.emit("tsm", "cvm-create", kvm=kvm.name, handle=str(handle))
            cur = Cvm(handle, 0)
        self.cvms[kvm.name] = Cvm(cur.handle, cur.users + 1)
        return cur.handle

    def _cvm_put(self, kvm: Kvm) -> None:
        lockdep_assert_held(self.lock, f"{self.name} cvm_put")
        cur = self.cvms[kvm.name]
        if cur.users > 1:
            self.cvms[kvm.name] = Cvm(cur.handle, cur.users - 1)
            return
        del self.cvms[kvm.name]
        try:
            self._cvm_destroy(cur.handle)
        except (OSError, FirmwareError) as e:
            self.sched.emit("tsm", "unbind-error", dev=kvm.name, step="cvm-destroy",
                            error=str(e))
            return
        self.sched.emit("tsm", "cvm-destroy", kvm=kvm.name)

    # ----- PciTsmOps -----------------------------------------------------------------------
    def probe(self, pdev: PciDevice) -> Any | None:
        return pdev.tdi  # a function without a TDISP responder has nothing to bind

    def bind(self, pdev: PciDevice, kvm: Kvm, tdi_id: int) -> Any:
        self.core.assert_tdi_ops_locked(self._dsm(pdev), f"{self.name} bind")
        if kvm.vm_type not in self.CVM_TYPES:
            raise kerr(errno.EINVAL, f"{self.name} bind {pdev.name}: {kvm.name} is VM type "
                       f"{kvm.vm_type}, not a confidential VM {self.CVM_TYPES}")
        tdi = self._tdi(pdev)
        with self.lock:
            handle = self._cvm_get(kvm)
            try:
                priv = self._bind(pdev, tdi, handle, tdi_id)
            except BaseException:
                self._cvm_put(kvm)
                raise
        self.mmio[pdev.name] = ()
        return priv

    def unbind(self, tdi: PciTdi) -> None:
        pdev = tdi.pdev
        self.core.assert_tdi_ops_locked(self._dsm(pdev), f"{self.name} unbind")
        done = self._unbind(tdi, self.mmio.get(pdev.name, ()))
        self.mmio.pop(pdev.name, None)
        if done:
            with self.lock:
                self._cvm_put(tdi.kvm)

    def guest_req(self, tdi: PciTdi, scope: int, req: bytes) -> bytes:
        pdev = tdi.pdev
        self.core.assert_tdi_ops_locked(self._dsm(pdev), f"{self.name} guest_req")
        what = f"{self.name} guest_req {pdev.name}"
        try:
            msg = tdisp.decode(req)
        except tdisp.TdispDecodeError as e:
            raise kerr(errno.EINVAL, f"{what}: malformed TDISP request ({e})") from e
        if scope == PCI_TSM_REQ_INFO:
            if not isinstance(msg, INFO_REQUESTS):
                raise kerr(errno.EINVAL, f"{what}: {type(msg).__name__} is not an INFO "
                           "request")
            return tdisp.encode(self._relay(tdi, msg))
        if isinstance(msg, tdisp.StartInterface):
            self._accept(tdi, self.mmio.get(pdev.name, ()))
            self.sched.emit("tsm", "accept", dev=pdev.name)
            return tdisp.encode(tdisp.StartInterfaceResponse(msg.function_id))
        if isinstance(msg, tdisp.StopInterface):
            self._stop(tdi)
            return tdisp.encode(tdisp.StopInterfaceResponse(msg.function_id))
        raise kerr(errno.EINVAL, f"{what}: {type(msg).__name__} is not a STATE_CHANGE "
                   "request")

    # ----- private MMIO (KVM's hook stand-in) ----------------------------------------------
    def map_private_mmio(self, pdev: PciDevice, gpa: int) -> list[MmioMap]:
        """Map every locked TEE MMIO range of ``pdev``'s bound TDI into its cVM's secure
        stage-2, the first at ``gpa`` and the others at the same offsets from it. EBUSY when
        mapped already; ENXIO when nothing is bound; the firmware's errno otherwise."""
        with self.core.tdi_locked(pdev) as tdi:
            if self.mmio.get(pdev.name):
                raise kerr(errno.EBUSY, f"{self.name} {pdev.name}: private MMIO is mapped")
            hw = self._tdi(pdev)
            ranges = hw.private_ranges()
            if not ranges:
                raise kerr(errno.ENXIO, f"{self.name} {pdev.name}: no TEE MMIO locked")
            first = ranges[0][0]
            done: list[MmioMap] = []
            for lo, hi in ranges:
                bar = next(r.bar for r in hw.ranges if r.base <= lo < r.end)
                m = MmioMap(gpa + lo - first, lo, hi - lo, bar)
                try:
                    self._map(tdi, m)
                except OSError:
                    self._unmap_partial(tdi, done)
                    raise
                done.append(m)
                self.sched.emit("tsm", "mmio-map", dev=pdev.name, gpa=m.gpa, pa=m.pa,
                                size=m.size)
            self.mmio[pdev.name] = tuple(done)
            return done

    # ----- helpers -------------------------------------------------------------------------
    def _dsm(self, pdev: PciDevice) -> str:
        ctx = self.core.tsm.get(pdev.name)
        return ctx.dsm if ctx is not None else pdev.name

    def _tdi(self, pdev: PciDevice) -> Tdi:
        if pdev.tdi is None:
            raise kerr(errno.ENXIO, f"{self.name}: {pdev.name} has no TDISP responder")
        return pdev.tdi

    def step(self, pdev: PciDevice, name: str, fn: Callable[..., Any], *args: Any) -> bool:
        """One step of an unbind: the firmware call (retried while busy), logged; False (and
        an ``unbind-error`` event) when the firmware refused it."""
        try:
            self.call_retrying(fn, *args)
        except OSError as e:
            self.sched.emit("tsm", "unbind-error", dev=pdev.name, step=name, error=str(e))
            return False
        self.sched.emit("tsm", "unbind-step", dev=pdev.name, step=name)
        return True

    def fetch_report(self, fid: int, send: Callable[[tdisp.Message], tdisp.Message],
                     what: str) -> tdisp.InterfaceReport:
        """GET_DEVICE_INTERFACE_REPORT in portions until nothing remains."""
        data = b""
        while True:
            rsp = send(tdisp.GetDeviceInterfaceReport(fid, len(data), 0xFFFF))
            if not isinstance(rsp, tdisp.DeviceInterfaceReport):
                raise kerr(errno.EIO, f"{self.name} {what}: interface report answered "
                           f"{type(rsp).__name__}")
            data += rsp.portion
            if rsp.remainder_length == 0:
                return tdisp.InterfaceReport.unpack(data)

    @staticmethod
    def doe(tdi: Tdi, msg: tdisp.Message) -> tdisp.Message:
        """A TDISP exchange over the device's DOE mailbox (pci_tsm_doe_transfer)."""
        return tdisp.decode(tdi.handle(tdisp.encode(msg)))

    # ----- the subclass's firmware sequences -----------------------------------------------
    def _cvm_create(self, kvm: Kvm) -> Any:
        raise NotImplementedError

    def _cvm_destroy(self, handle: Any) -> None:
        raise NotImplementedError

    def _bind(self, pdev: PciDevice, tdi: Tdi, handle: Any, tdi_id: int) -> Any:
        raise NotImplementedError

    def _map(self, tdi: PciTdi, m: MmioMap) -> None:
        raise NotImplementedError

    def _unmap_partial(self, tdi: PciTdi, done: list[MmioMap]) -> None:
        """Undo the maps of a failed :meth:`map_private_mmio` (the TDI stays locked)."""
        raise NotImplementedError

    def _accept(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> None:
        raise NotImplementedError

    def _stop(self, tdi: PciTdi) -> None:
        raise NotImplementedError

    def _relay(self, tdi: PciTdi, msg: tdisp.Message) -> tdisp.Message:
        return self.doe(self._tdi(tdi.pdev), msg)

    def _unbind(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> bool:
        """The platform's unbind order; True when every step succeeded."""
        raise NotImplementedError
