"""The PCI TSM core (drivers/pci/tsm.c and include/linux/pci-tsm.h as of 6.19, with the
bind/unbind/guest_req half of Dan Williams' and Xu Yilun's series): platform TSMs register
(:func:`pci_tsm_register`), a device's function 0 is connected to one (:func:`pci_tsm_connect`,
sysfs ``tsm/connect``: SPDM session and IDE), its functions are bound as TDIs to a KVM
(:func:`pci_tsm_bind` / :func:`pci_tsm_unbind`), guest requests are marshalled to the TSM
(:func:`pci_tsm_guest_req`), and :func:`pci_tsm_disconnect` unbinds every TDI of the device in
reverse order before tearing the link down.

A platform TSM is a :class:`TsmDev` (struct tsm_dev, named ``tsm<N>`` in registration order)
with :class:`PciTsmOps` (struct pci_tsm_ops): link ops ``probe``/``remove``/``connect``/
``disconnect``/``bind``/``unbind``/``guest_req``. A TSM without link ops (``link = False``: a
"devsec" TSM, the guest side) cannot connect (ENXIO).

Checks and errnos, in the kernel's order:
- connect(pdev, "tsm<N>"): a name not of that form EINVAL; (write rwsem) pdev already has a
  TSM context EBUSY; no such TSM or not a link TSM ENXIO; ``ops.probe`` refusing ENXIO; then
  under the PF0 lock ``ops.connect`` (its errno); then every other function of the device is
  probed (``pci_tsm_walk_fns``: functions 1..7 of the slot; a failed probe only disables that
  function).
- disconnect(pdev, name): (write rwsem) no TSM context ENXIO; ``name`` not the connected TSM's
  EINVAL; then unbind every TDI (functions 7..1, then 0: ``pci_tsm_walk_fns_reverse``), and
  under the PF0 lock remove every function's context in reverse, then ``ops.disconnect``.
- bind(pdev, kvm, tdi_id): NULL kvm EINVAL; (read rwsem) no TSM context EINVAL ("not
  connected"); not a link TSM ENXIO; (PF0 lock) bound to the same kvm 0, to another EBUSY;
  ``ops.bind`` (its errno).
- unbind(pdev): always succeeds (nothing bound: nothing happens).
- guest_req(pdev, scope, req): scope above STATE_CHANGE (DEBUG_READ 2, DEBUG_WRITE 3) EINVAL
  before any lock; (read rwsem) no context ENXIO; not a link TSM ENXIO; (PF0 lock) nothing
  bound ENXIO; ``ops.guest_req`` (its errno).
A refused call changes nothing (every check precedes every write; an ops call that fails has
undone its own work). Errors are OSError with the errno and the failed check (errors.kerr).

Only function 0 of a device with IDE or DEVCAP.TEE is a "PF0" (is_pci_tsm_pf0): sysfs shows
``connect``/``disconnect`` only there; the model answers ENOENT elsewhere (the attribute file
does not exist: invented errno for an invented call path).

Shared state (tracked, per kernel: the static ``pci.tsm``, :class:`PciTsmCore`) and its locks:
- ``pci_tsm_rwsem`` (an RwSem): held for write by register/unregister, connect, disconnect and
  destroy (device removal); for read by bind, unbind and guest_req.
- ``tsm_devs`` (the registered TSMs): written under the rwsem for write (asserted).
- ``tsm`` (pdev->tsm: :class:`PciTsm` per function name): written under the rwsem for write
  (asserted in :meth:`PciTsmCore._set_tsm`); read under it for read.
- ``pf0_locks`` (each PF0's ``pci_tsm_pf0.lock``, a Mutex made at connect): written under
  the rwsem for write.
- ``tdi`` (pdev->tsm->tdi: :class:`PciTdi` per function name): written under the rwsem (read
  or write) *and* the PF0 lock (both asserted in :meth:`PciTsmCore._set_tdi`). The platform
  drivers' ``bind``/``unbind``/``guest_req`` run under both, which they assert
  (:meth:`PciTsmCore.assert_tdi_ops_locked`).
Records are immutable (frozen dataclasses); a change replaces the entry.

Events (``tsm``): ``register``/``unregister`` (tsm), ``connect``/``disconnect`` (dev, tsm),
``probe``/``remove`` (dev, dsm), ``bind``/``unbind`` (dev, kvm, tdi_id), ``guest-req`` (dev,
scope, size) — one per state change; a refused call emits nothing (its OSError says why).

Leaves out: SPDM/DOE transport and IDE stream allocation (``connect`` is a state the platform
driver keeps), devsec TSMs' lock/unlock/accept (the guest's side), SR-IOV VFs and switch
upstream-port DSMs in the function walk, interruptible lock acquisition (EINTR), sysfs
``connect`` show/``authenticated``, the ``tsm_code`` out-parameter of guest_req, and the
CAP_SYS_RAW_IO/taint rules for DEBUG_WRITE (refused like every debug scope, as 6.19 does).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....sim import track
from ....sim.locks import Mutex, RwSem
from ....sim.track import TrackedDict
from ...init import kernel_static, teardown
from ...lockdep_assert import lockdep_assert_held, lockdep_assert_held_write

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm

# include/linux/pci-tsm.h: enum pci_tsm_req_scope
PCI_TSM_REQ_INFO = 0
PCI_TSM_REQ_STATE_CHANGE = 1
PCI_TSM_REQ_DEBUG_READ = 2
PCI_TSM_REQ_DEBUG_WRITE = 3
SCOPES = {0: "INFO", 1: "STATE_CHANGE", 2: "DEBUG_READ", 3: "DEBUG_WRITE"}


class PciTsmOps:
    """struct pci_tsm_ops (its link ops): what a platform TSM driver implements. ``probe``
    returns the function's TSM context (None: not supported), ``bind`` the platform's TDI
    (raising OSError with an errno when refused, after undoing its own work); ``unbind``
    never fails. ``link``: False for a devsec-only TSM (no link ops)."""

    name = "tsm-driver"
    link = True

    def probe(self, pdev: PciDevice) -> Any | None:
        return object()

    def remove(self, pdev: PciDevice, ctx: Any) -> None:
        return None

    def connect(self, pdev: PciDevice) -> None:
        return None

    def disconnect(self, pdev: PciDevice) -> None:
        return None

    def bind(self, pdev: PciDevice, kvm: Kvm, tdi_id: int) -> Any:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: bind not implemented")

    def unbind(self, tdi: PciTdi) -> None:
        return None

    def guest_req(self, tdi: PciTdi, scope: int, req: bytes) -> bytes:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: guest_req not implemented")


@dataclass(frozen=True)
class TsmDev:
    """struct tsm_dev: a registered platform TSM, ``tsm<id>``."""

    id: int
    ops: PciTsmOps

    @property
    def name(self) -> str:
        return f"tsm{self.id}"


@dataclass(frozen=True)
class PciTsm:
    """struct pci_tsm: function ``pdev``'s context with TSM ``tsm`` whose DSM (the device
    function speaking for it) is ``dsm``; ``ctx`` is what ``ops.probe`` returned."""

    pdev: str
    tsm: TsmDev
    dsm: str
    ctx: Any


@dataclass(frozen=True)
class PciTdi:
    """struct pci_tdi: function ``pdev`` bound to ``kvm`` as ``tdi_id``; ``priv`` is the
    platform driver's TDI."""

    pdev: PciDevice
    kvm: Kvm
    tdi_id: int
    priv: Any


def slot_of(bdf: str) -> tuple[str, int]:
    """``("0000:01:00", 0)`` for ``0000:01:00.0``: the slot and the function number."""
    slot, fn = bdf.rsplit(".", 1)
    return slot, int(fn, 16)


class PciTsmCore:
    """One kernel's TSM core state (see the module docstring for the lock of each field)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.sched = kernel.sched
        self.rwsem = RwSem(self.sched, "pci_tsm_rwsem")
        self.tsm_devs: TrackedDict[int, TsmDev] = TrackedDict(label="pci_tsm.tsm_devs")
        self.tsm: TrackedDict[str, PciTsm] = TrackedDict(label="pci_tsm.pdev_tsm")
        self.pf0_locks: TrackedDict[str, Mutex] = TrackedDict(label="pci_tsm.pf0_locks")
        self.tdi: TrackedDict[str, PciTdi] = TrackedDict(label="pci_tsm.tdi")

    # ----- helpers ----------------------------------------------------------------------------
    def _devices(self) -> dict[str, PciDevice]:
        from ...vfio.pci.vfio_pci import pci_devices  # enumeration lives there for now
        devs: dict[str, PciDevice] = pci_devices(self.kernel)
        return devs

    def functions(self, pdev: PciDevice) -> list[PciDevice]:
        """The other functions of ``pdev``'s slot, 1..7 in order (pci_tsm_walk_fns)."""
        slot, _ = slot_of(pdev.func.bdf)
        found = {slot_of(d.func.bdf)[1]: d for d in self._devices().values()
                 if slot_of(d.func.bdf)[0] == slot}
        return [found[i] for i in range(1, 8) if i in found]

    def pf0_of(self, pdev: PciDevice) -> PciDevice | None:
        slot, _ = slot_of(pdev.func.bdf)
        for d in self._devices().values():
            if slot_of(d.func.bdf) == (slot, 0):
                return d
        return None

    @staticmethod
    def is_pf0(pdev: PciDevice) -> bool:
        """is_pci_tsm_pf0: function 0 with IDE or DEVCAP.TEE (the model: TDISP or IDE)."""
        return slot_of(pdev.func.bdf)[1] == 0 and bool(pdev.tdisp or pdev.ide_cap)

    def _set_tsm(self, name: str, value: PciTsm | None, what: str) -> None:
        lockdep_assert_held_write(self.rwsem, what)
        if value is None:
            self.tsm.pop(name, None)
        else:
            self.tsm[name] = value

    def _set_tdi(self, name: str, dsm: str, value: PciTdi | None, what: str) -> None:
        self.assert_tdi_ops_locked(dsm, what)
        if value is None:
            self.tdi.pop(name, None)
        else:
            self.tdi[name] = value

    def assert_tdi_ops_locked(self, dsm: str, what: str) -> None:
        """What bind/unbind/guest_req (core and platform ops) run under: pci_tsm_rwsem and
        the PF0 (DSM) ``dsm``'s lock."""
        lockdep_assert_held(self.rwsem, what)
        lock = self.pf0_locks.get(dsm)
        if lock is not None:
            lockdep_assert_held(lock, what)

    def dsm_of_tdi(self, tdi: PciTdi) -> str:
        ctx = self.tsm.get(tdi.pdev.name)
        return ctx.dsm if ctx is not None else tdi.pdev.name

    # ----- registration -----------------------------------------------------------------------
    def register(self, ops: PciTsmOps) -> TsmDev:
        """pci_tsm_register (tsm_register): ``tsm<N>``."""
        with self.rwsem.write():
            lockdep_assert_held_write(self.rwsem, "pci_tsm_register")
            used = set(self.tsm_devs)  # the tsm_dev IDA: the lowest free id
            dev = TsmDev(min(set(range(len(used) + 1)) - used), ops)
            self.tsm_devs[dev.id] = dev
            self.sched.emit("tsm", "register", tsm=dev.name, driver=ops.name, link=ops.link)
            return dev

    def unregister(self, dev: TsmDev) -> None:
        """pci_tsm_unregister: every device connected to ``dev`` is disconnected first."""
        with self.rwsem.write():
            for name in sorted(n for n, t in self.tsm.items()
                               if t.tsm.id == dev.id and t.dsm == n):
                self._disconnect(self._devices()[name])
            del self.tsm_devs[dev.id]
            self.sched.emit("tsm", "unregister", tsm=dev.name)

    def find(self, name: str) -> TsmDev | None:
        for d in self.tsm_devs.values():
            if d.name == name:
                return d
        return None

    # ----- connect / disconnect ---------------------------------------------------------------
    def connect(self, pdev: PciDevice, tsm_name: str) -> None:
        """connect_store + pci_tsm_connect."""
        what = f"tsm connect {pdev.name}"
        if not self.is_pf0(pdev):
            raise kerr(errno.ENOENT, f"{what}: not a TSM PF0 (function 0 with IDE or TEE): "
                       "no tsm/connect attribute")
        m = re.fullmatch(r"tsm(\d+)\n?", tsm_name)
        if m is None:
            raise kerr(errno.EINVAL, f"{what}: {tsm_name!r} is not 'tsm<N>'")
        with self.rwsem.write():
            if pdev.name in self.tsm:
                raise kerr(errno.EBUSY, f"{what}: already connected to "
                           f"{self.tsm[pdev.name].tsm.name}")
            dev = self.tsm_devs.get(int(m.group(1)))
            if dev is None or not dev.ops.link:
                raise kerr(errno.ENXIO, f"{what}: {tsm_name} is not a registered link TSM")
            ctx = dev.ops.probe(pdev)
            if ctx is None:
                raise kerr(errno.ENXIO, f"{what}: {dev.name} probe refused the device")
            lock = Mutex(self.sched, f"{pdev.name}.tsm_pf0.lock", "pci_tsm_pf0->lock")
            self.pf0_locks[pdev.name] = lock
            try:
                with lock:
                    dev.ops.connect(pdev)
            except BaseException:
                del self.pf0_locks[pdev.name]
                dev.ops.remove(pdev, ctx)
                raise
            self._set_tsm(pdev.name, PciTsm(pdev.name, dev, pdev.name, ctx), "pci_tsm_connect")
            self.sched.emit("tsm", "connect", dev=pdev.name, tsm=dev.name)
            for fn in self.functions(pdev):  # probe_fn
                fctx = dev.ops.probe(fn)
                if fctx is not None:
                    self._set_tsm(fn.name, PciTsm(fn.name, dev, pdev.name, fctx), "probe_fn")
                    self.sched.emit("tsm", "probe", dev=fn.name, dsm=pdev.name)

    def disconnect(self, pdev: PciDevice, tsm_name: str) -> None:
        """disconnect_store + pci_tsm_disconnect."""
        what = f"tsm disconnect {pdev.name}"
        if not self.is_pf0(pdev):
            raise kerr(errno.ENOENT, f"{what}: not a TSM PF0: no tsm/disconnect attribute")
        with self.rwsem.write():
            ctx = self.tsm.get(pdev.name)
            if ctx is None:
                raise kerr(errno.ENXIO, f"{what}: not connected")
            if tsm_name.rstrip("\n") != ctx.tsm.name:
                raise kerr(errno.EINVAL, f"{what}: connected to {ctx.tsm.name}, not "
                           f"{tsm_name!r}")
            self._disconnect(pdev)

    def _disconnect(self, pdev: PciDevice) -> None:
        """__pci_tsm_disconnect + tsm_remove: the rwsem held for write."""
        lockdep_assert_held_write(self.rwsem, "__pci_tsm_disconnect")
        ctx = self.tsm[pdev.name]
        fns = self.functions(pdev)
        for fn in reversed(fns):  # pci_tsm_unbind_all
            self._unbind(fn)
        self._unbind(pdev)
        with self.pf0_locks[pdev.name]:
            for fn in reversed(fns):  # remove_fn
                fctx = self.tsm.get(fn.name)
                if fctx is not None and fctx.dsm == pdev.name:
                    ctx.tsm.ops.remove(fn, fctx.ctx)
                    self._set_tsm(fn.name, None, "remove_fn")
                    self.sched.emit("tsm", "remove", dev=fn.name, dsm=pdev.name)
            ctx.tsm.ops.disconnect(pdev)
        ctx.tsm.ops.remove(pdev, ctx.ctx)
        self._set_tsm(pdev.name, None, "pci_tsm_disconnect")
        del self.pf0_locks[pdev.name]
        self.sched.emit("tsm", "disconnect", dev=pdev.name, tsm=ctx.tsm.name)

    def destroy(self, pdev: PciDevice) -> None:
        """pci_tsm_destroy (device removal): disconnect a connected PF0, else unbind."""
        with self.rwsem.write():
            ctx = self.tsm.get(pdev.name)
            if ctx is None:
                return
            if ctx.dsm == pdev.name:
                self._disconnect(pdev)
            else:
                self._unbind(pdev)

    # ----- bind / unbind / guest_req ----------------------------------------------------------
    @contextmanager
    def _ops_locked(self, ctx: PciTsm) -> Iterator[Mutex]:
        lock = self.pf0_locks[ctx.dsm]
        with lock:
            yield lock

    def bind(self, pdev: PciDevice, kvm: Kvm | None, tdi_id: int) -> int:
        """pci_tsm_bind: 0, or OSError (see the module docstring)."""
        what = f"pci_tsm_bind {pdev.name}"
        if kvm is None:
            raise kerr(errno.EINVAL, f"{what}: NULL kvm")
        with self.rwsem.read():
            ctx = self.tsm.get(pdev.name)
            if ctx is None:
                raise kerr(errno.EINVAL, f"{what}: not connected (no TSM context)")
            if not ctx.tsm.ops.link:
                raise kerr(errno.ENXIO, f"{what}: {ctx.tsm.name} is not a link TSM")
            with self._ops_locked(ctx):
                cur = self.tdi.get(pdev.name)
                if cur is not None:
                    if cur.kvm is kvm:
                        return 0
                    raise kerr(errno.EBUSY, f"{what}: bound to {cur.kvm.name}, not "
                               f"{kvm.name}")
                priv = ctx.tsm.ops.bind(pdev, kvm, tdi_id)
                self._set_tdi(pdev.name, ctx.dsm, PciTdi(pdev, kvm, tdi_id, priv),
                              "pci_tsm_bind")
                self.sched.emit("tsm", "bind", dev=pdev.name, kvm=kvm.name, tdi_id=tdi_id)
        return 0

    def _unbind(self, pdev: PciDevice) -> None:
        """__pci_tsm_unbind: the rwsem held (read or write)."""
        lockdep_assert_held(self.rwsem, "__pci_tsm_unbind")
        ctx = self.tsm.get(pdev.name)
        if ctx is None:
            return
        with self._ops_locked(ctx):
            tdi = self.tdi.get(pdev.name)
            if tdi is None:
                return
            ctx.tsm.ops.unbind(tdi)
            self._set_tdi(pdev.name, ctx.dsm, None, "__pci_tsm_unbind")
            self.sched.emit("tsm", "unbind", dev=pdev.name, kvm=tdi.kvm.name,
                            tdi_id=tdi.tdi_id)

    def unbind(self, pdev: PciDevice) -> None:
        """pci_tsm_unbind: always succeeds."""
        with self.rwsem.read():
            self._unbind(pdev)

    def guest_req(self, pdev: PciDevice, scope: int, req: bytes) -> bytes:
        """pci_tsm_guest_req: the TSM's response to a guest request of ``scope``."""
        what = f"pci_tsm_guest_req {pdev.name}"
        if scope not in (PCI_TSM_REQ_INFO, PCI_TSM_REQ_STATE_CHANGE):
            raise kerr(errno.EINVAL, f"{what}: scope {SCOPES.get(scope, scope)} is not a "
                       "TDISP operation (INFO or STATE_CHANGE)")
        with self.rwsem.read():
            ctx = self.tsm.get(pdev.name)
            if ctx is None:
                raise kerr(errno.ENXIO, f"{what}: not connected (no TSM context)")
            if not ctx.tsm.ops.link:
                raise kerr(errno.ENXIO, f"{what}: {ctx.tsm.name} is not a link TSM")
            with self._ops_locked(ctx):
                tdi = self.tdi.get(pdev.name)
                if tdi is None:
                    raise kerr(errno.ENXIO, f"{what}: no TDI bound")
                rsp = ctx.tsm.ops.guest_req(tdi, scope, bytes(req))
                self.sched.emit("tsm", "guest-req", dev=pdev.name, scope=SCOPES[scope],
                                size=len(req))
                return rsp

    @contextmanager
    def tdi_locked(self, pdev: PciDevice) -> Iterator[PciTdi]:
        """The bound TDI of ``pdev`` under the rwsem (read) and the PF0 lock, for the
        callers of a platform driver's extra ops (KVM's private MMIO hooks; the designs of
        issue 13 §5); ENXIO when nothing is bound."""
        with self.rwsem.read():
            ctx = self.tsm.get(pdev.name)
            if ctx is None:
                raise kerr(errno.ENXIO, f"tsm {pdev.name}: not connected")
            with self._ops_locked(ctx):
                tdi = self.tdi.get(pdev.name)
                if tdi is None:
                    raise kerr(errno.ENXIO, f"tsm {pdev.name}: no TDI bound")
                yield tdi

    # ----- queries (nothing recorded) ---------------------------------------------------------
    def bound(self, pdev: PciDevice) -> PciTdi | None:
        with track.untracked():
            return self.tdi.get(pdev.name)

    def connected(self, pdev: PciDevice) -> str | None:
        """The name of the TSM ``pdev`` (any function) has a context with, or None."""
        with track.untracked():
            ctx = self.tsm.get(pdev.name)
        return None if ctx is None else ctx.tsm.name


pci_tsm = kernel_static("pci.tsm", PciTsmCore)


@teardown("pci_tsm")
def pci_tsm_teardown(kernel: Kernel) -> list[str]:
    """A TDI still bound once every process exited: nobody will unbind it (the designs
    of issue 13 §5 decide who should have)."""
    with track.untracked():
        return [f"pci_tsm: {n} still bound to {t.kvm.name} as TDI {t.tdi_id:#x}"
                for n, t in sorted(pci_tsm(kernel).tdi.items())]


# ----- the kernel's entry points ------------------------------------------------------------
def pci_tsm_register(kernel: Kernel, ops: PciTsmOps) -> TsmDev:
    return pci_tsm(kernel).register(ops)


def pci_tsm_unregister(kernel: Kernel, dev: TsmDev) -> None:
    pci_tsm(kernel).unregister(dev)


def pci_tsm_connect(kernel: Kernel, pdev: PciDevice, tsm_name: str) -> None:
    pci_tsm(kernel).connect(pdev, tsm_name)


def pci_tsm_disconnect(kernel: Kernel, pdev: PciDevice, tsm_name: str) -> None:
    pci_tsm(kernel).disconnect(pdev, tsm_name)


def pci_tsm_bind(kernel: Kernel, pdev: PciDevice, kvm: Kvm | None, tdi_id: int) -> int:
    return pci_tsm(kernel).bind(pdev, kvm, tdi_id)


def pci_tsm_unbind(kernel: Kernel, pdev: PciDevice) -> None:
    pci_tsm(kernel).unbind(pdev)


def pci_tsm_guest_req(kernel: Kernel, pdev: PciDevice, scope: int, req: bytes) -> bytes:
    return pci_tsm(kernel).guest_req(pdev, scope, req)
