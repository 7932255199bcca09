"""The Arm CCA platform TSM driver (the CCA device-assignment RFCs, 2025: drivers/virt/coco/
arm-cca-host/ — arm-cca.c's pci_tsm_ops and rmi-da.c's RMI wrappers), calling the RMM model
(hw/secure/cca.py).

- connect: a delegated granule for the PDEV, RMI_PDEV_CREATE (the RMM takes it to READY: its
  SPDM/IDE are not modelled); disconnect: RMI_PDEV_DESTROY, the granule undelegated and freed.
  The PDEV granule is kept per PF0 in :attr:`CcaTsm.pdevs` (written under the PF0 lock).
- bind(pdev, kvm, tdi_id): the realm (this driver's stand-in for KVM's RMI_REALM_CREATE: an RD
  and one RTT granule, KVM's VMID = the VM's id; VM type SW_PROTECTED stands for a realm VM
  on this x86-shaped KVM — *invented*), a VDEV granule, RMI_VDEV_CREATE, RMI_VDEV_LOCK
  (LOCK_INTERFACE), the interface report over DOE. A refusal undoes the earlier steps.
- private MMIO: RMI_GRANULE_DEV_DELEGATE and RMI_RTT_DEV_MAP at the IPA.
- guest accept (guest_req STATE_CHANGE START_INTERFACE): RMI_VDEV_START.
- unbind: RMI_VDEV_UNLOCK (STOP), RMI_RTT_DEV_UNMAP, RMI_VDEV_DESTROY, then
  RMI_GRANULE_DEV_UNDELEGATE — only now is the MMIO the host's — and the VDEV granule back.
- Errors: every RMI refusal EIO (RMI_ERROR_DEVICE included; the RFC returns -EIO).

Locking: see platform.py. Leaves out: RMI_PDEV_COMMUNICATE/RMI_VDEV_COMMUNICATE loops, the
realm's RSI calls (the guest's accept is the driver's VDEV_START on its behalf), RECs, the
SMMU VMID question (hw/secure/cca.py answers it; nothing here depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ....hw import tdisp
from ....hw.secure.cca import Rmm
from ....sim.track import TrackedDict
from ....uapi import kvm as K
from ...lockdep_assert import lockdep_assert_held
from .platform import PAGE, MmioMap, Platform, PlatformTsm, register_platform

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ....hw.tdi import Tdi
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm
    from .core import PciTdi


@dataclass(frozen=True)
class Realm:
    name: str
    rd: tuple[int, int]
    rtt: tuple[int, int]


@dataclass(frozen=True)
class CcaTdi:
    bdf: str
    realm: str
    vdev: tuple[int, int]
    report: tdisp.InterfaceReport


class CcaTsm(PlatformTsm):
    name = "cca"
    CVM_TYPES = (K.KVM_X86_SW_PROTECTED_VM,)
    FIRMWARE = Rmm

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.rmm: Rmm = self.fw  # type: ignore[assignment]
        self.pdevs: TrackedDict[str, tuple[int, int]] = TrackedDict(label="cca.pdevs")

    def _granule(self, what: str) -> tuple[int, int]:
        (g,) = self.alloc_page(what)
        try:
            self.call(self.rmm.granule_delegate, g[0], PAGE)
        except OSError:
            self.free_pages([g])
            raise
        return g

    def _granule_free(self, g: tuple[int, int]) -> None:
        self.call(self.rmm.granule_undelegate, g[0], PAGE)
        self.free_pages([g])

    # ----- link ---------------------------------------------------------------------------
    def connect(self, pdev: PciDevice) -> None:
        lockdep_assert_held(self.core.pf0_locks[pdev.name], "cca connect")
        bdf = pdev.func.bdf
        g = self._granule(f"pdev:{bdf}")
        try:
            self.call(self.rmm.pdev_create, bdf, g[0])
        except OSError:
            self.undo(lambda: self._granule_free(g))
            raise
        self.pdevs[pdev.name] = g

    def disconnect(self, pdev: PciDevice) -> None:
        lockdep_assert_held(self.core.pf0_locks[pdev.name], "cca disconnect")
        g = self.pdevs.pop(pdev.name, None)
        if g is None:
            return
        if self.step(pdev, "pdev-destroy", self.rmm.pdev_destroy, pdev.func.bdf):
            self.step(pdev, "pdev-granule", self._granule_free, g)

    # ----- realms -------------------------------------------------------------------------
    def _cvm_create(self, kvm: Kvm) -> Any:
        rd = self._granule(f"rd:{kvm.name}")
        try:
            self.call(self.rmm.realm_create, kvm.name, rd[0], kvm.vm_id)
        except OSError:
            self.undo(lambda: self._granule_free(rd))
            raise
        try:
            rtt = self._granule(f"rtt:{kvm.name}")
            self.call(self.rmm.rtt_create, kvm.name, rtt[0])
        except OSError:
            self.undo(lambda: self.rmm.realm_destroy(kvm.name), lambda: self._granule_free(rd))
            raise
        return Realm(kvm.name, rd, rtt)

    def _cvm_destroy(self, handle: Any) -> None:
        r: Realm = handle
        self.call(self.rmm.rtt_destroy, r.name, r.rtt[0])
        self.call(self.rmm.realm_destroy, r.name)
        self._granule_free(r.rtt)
        self._granule_free(r.rd)

    # ----- TDIs ---------------------------------------------------------------------------
    def _bind(self, pdev: PciDevice, tdi: Tdi, handle: Any, tdi_id: int) -> Any:
        r: Realm = handle
        bdf = pdev.func.bdf
        g = self._granule(f"vdev:{bdf}")
        try:
            self.call(self.rmm.vdev_create, r.name, bdf, g[0], tdi)
        except OSError:
            self.undo(lambda: self._granule_free(g))
            raise
        try:
            self.call(self.rmm.vdev_lock, bdf)
            report = self.fetch_report(tdi.function_id, lambda m: self.doe(tdi, m), bdf)
        except OSError:
            self.undo(lambda: self.rmm.vdev_unlock(bdf), lambda: self.rmm.vdev_destroy(bdf),
                      lambda: self._granule_free(g))
            raise
        return CcaTdi(bdf, r.name, g, report)

    def _map(self, tdi: PciTdi, m: MmioMap) -> None:
        t: CcaTdi = tdi.priv
        self.call(self.rmm.dev_granule_delegate, m.pa, m.size)
        try:
            self.call(self.rmm.rtt_dev_map, t.realm, t.bdf, m.gpa, m.pa, m.size)
        except OSError:
            self.undo(lambda: self.rmm.dev_granule_undelegate(m.pa, m.size))
            raise

    def _unmap_partial(self, tdi: PciTdi, done: list[MmioMap]) -> None:
        t: CcaTdi = tdi.priv
        for m in done:
            self.undo(partial(self.rmm.rtt_dev_unmap, t.realm, m.gpa, m.size),
                      partial(self.rmm.dev_granule_undelegate, m.pa, m.size))

    def _accept(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> None:
        self.call(self.rmm.vdev_start, tdi.priv.bdf)

    def _stop(self, tdi: PciTdi) -> None:
        self.call(self.rmm.vdev_unlock, tdi.priv.bdf)

    def _unbind(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> bool:
        t: CcaTdi = tdi.priv
        pdev, rmm = tdi.pdev, self.rmm
        v = rmm.vdevs.get(t.bdf)
        if v is not None and v.state != "UNLOCKED":
            if not self.step(pdev, "vdev-unlock", rmm.vdev_unlock, t.bdf):
                return False
        for m in mmio:
            if not self.step(pdev, "rtt-dev-unmap", rmm.rtt_dev_unmap, t.realm, m.gpa, m.size):
                return False
        if not self.step(pdev, "vdev-destroy", rmm.vdev_destroy, t.bdf):
            return False
        for m in mmio:
            if not self.step(pdev, "dev-granule-undelegate", rmm.dev_granule_undelegate,
                             m.pa, m.size):
                return False
        return self.step(pdev, "vdev-granule", self._granule_free, t.vdev)


def _rmm(kernel: Kernel) -> Rmm:
    return Rmm(kernel.sched, kernel.phys)


CCA = register_platform(Platform("cca", _rmm, CcaTsm))
