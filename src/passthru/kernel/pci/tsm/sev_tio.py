"""The SEV-TIO platform TSM driver (Alexey Kardashevskiy's RFC, 2025: drivers/crypto/ccp/
sev-dev-tsm.c and sev-dev-tio.c — connect/IDE merged in 6.19, TDI bind not — and KVM's
``rmp_make_private_mmio`` and TIO guest-request forwarding), calling the PSP/RMP model
(hw/secure/sev.py).

- connect/disconnect: the SPDM session and IDE streams (6.19's TIO_DEV_CONNECT/CREATE) are a
  state; nothing reaches the firmware model (it leaves them out).
- bind(pdev, kvm, tdi_id) of an SNP VM (KVM_X86_SNP_VM): the SNP guest (this driver's stand-in
  for SNP_LAUNCH_START, ASID = the VM's id), then SEV_CMD_TIO_TDI_BIND with the guest device id
  ``tdi_id`` (the PSP sends LOCK_INTERFACE), then the interface report over the device's DOE
  mailbox. A failed report fetch unbinds again (TIO_TDI_UNBIND): nothing changed.
- private MMIO: RMPUPDATE of the TDI's locked TEE MMIO to the guest at its GPA
  (``rmp_make_private_mmio``, unvalidated).
- guest accept (guest_req STATE_CHANGE START_INTERFACE): the guest's TIO requests, which KVM
  forwards — SDTE_WRITE (ASID, guest device id, vTOM = :data:`VTOM`, chosen), MMIO_VALIDATE of
  each mapped range (range id = BAR, offset in it), then the TIO op RUN (START_INTERFACE).
- unbind: SEV_CMD_TIO_TDI_UNBIND (the PSP stops the TDI, invalidates its SDTE, clears Validated
  on its MMIO), then RMPUPDATE of every mapped range back to the hypervisor — only then is the
  MMIO the host's.
- Errors: every PSP or RMPUPDATE refusal EIO (the RFC's sev_tio_* return -EIO for a firmware
  status; the PSP model has no busy status).

Locking: see platform.py. Leaves out: the host-built IOMMU mirror of the RMP (the rfc-sev-tio
design of issue 13 §1: the iommufd side builds it), TIO_TDI_INFO/STATUS, report signing,
vTOM from the guest, the PSP's TIO messages' sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ....hw import tdisp
from ....hw.secure.sev import SevFirmware
from ....uapi import kvm as K
from .platform import MmioMap, Platform, PlatformTsm, register_platform

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ....hw.tdi import Tdi
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm
    from .core import PciTdi

VTOM = 1 << 46  # the guest's virtual top of memory (chosen): private below, shared above


@dataclass(frozen=True)
class SevTdi:
    bdf: str
    asid: int
    guest_device_id: int
    report: tdisp.InterfaceReport


class SevTioTsm(PlatformTsm):
    name = "sev-tio"
    CVM_TYPES = (K.KVM_X86_SNP_VM,)
    FIRMWARE = SevFirmware

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.sev: SevFirmware = self.fw  # type: ignore[assignment]

    def _cvm_create(self, kvm: Kvm) -> Any:
        self.call(self.sev.snp_launch_start, kvm.name, kvm.vm_id)
        return kvm.vm_id

    def _cvm_destroy(self, handle: Any) -> None:
        self.call_retrying(self.sev.snp_decommission, handle)

    def _bind(self, pdev: PciDevice, tdi: Tdi, handle: Any, tdi_id: int) -> Any:
        bdf, asid = pdev.func.bdf, int(handle)
        self.call(self.sev.tio_tdi_bind, bdf, tdi, asid, tdi_id)
        try:
            report = self.fetch_report(tdi.function_id, lambda m: self.doe(tdi, m), bdf)
        except OSError:
            self.undo(lambda: self.sev.tio_tdi_unbind(bdf))
            raise
        return SevTdi(bdf, asid, tdi_id, report)

    def _map(self, tdi: PciTdi, m: MmioMap) -> None:
        self.call(self.sev.rmp_make_private_mmio, m.pa, m.size, tdi.priv.asid, m.gpa)

    def _unmap_partial(self, tdi: PciTdi, done: list[MmioMap]) -> None:
        for m in done:
            self.undo(partial(self.sev.rmp_make_shared, m.pa, m.size))

    def _accept(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> None:
        t: SevTdi = tdi.priv
        hw = self._tdi(tdi.pdev)
        self.call(self.sev.tio_sdte_write, t.asid, t.guest_device_id, VTOM, True)
        for m in mmio:
            base = next(r.base for r in hw.ranges if r.bar == m.bar)
            self.call(self.sev.tio_mmio_validate, t.asid, t.guest_device_id, m.gpa, m.size,
                      m.bar, m.pa - base, True)
        self.call(self.sev.tio_tdi_run, t.bdf)

    def _stop(self, tdi: PciTdi) -> None:
        self.call(self.sev.tio_tdi_stop, tdi.priv.bdf)

    def _unbind(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> bool:
        t: SevTdi = tdi.priv
        pdev = tdi.pdev
        if not self.step(pdev, "tio-tdi-unbind", self.sev.tio_tdi_unbind, t.bdf):
            return False
        for m in mmio:
            if not self.step(pdev, "rmp-make-shared", self.sev.rmp_make_shared, m.pa, m.size):
                return False
        return True


def _sev_firmware(kernel: Kernel) -> SevFirmware:
    return SevFirmware(kernel.sched, kernel.phys)


SEV = register_platform(Platform("sev", _sev_firmware, SevTioTsm))
