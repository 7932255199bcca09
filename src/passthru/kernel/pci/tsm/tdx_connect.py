"""The TDX Connect platform TSM driver (Xu Yilun's RFC, 2025: drivers/virt/coco/tdx-host/
tdx-host.c's pci_tsm_ops and arch/x86/virt/vmx/tdx/tdx.c's SEAMCALL wrappers; KVM's
tdx_sept_*_private_spte for the MMIO), calling the TDX module model (hw/secure/tdx.py).

- connect/disconnect: the SPDM session and IDE stream are a state (TDH.SPDM.*/TDH.IDE.* are
  not modelled): nothing reaches the module.
- bind(pdev, kvm, tdi_id) of a TDX VM (KVM_X86_TDX_VM): the TD (created by this driver at the
  first bind, see platform.py), metadata pages (DEVIFCS and TDISP buffers, two host pages),
  TDH.DEVIF.CREATE, LOCK_INTERFACE relayed through TDH.DEVIF.REQUEST (the module keeps the
  nonce), TDH.DMAR.ADD (the trusted device context entry), then the interface report fetched
  through the module. A step refused undoes the earlier ones in reverse (STOP, DMAR.BLOCK/
  REMOVE, DEVIF.REMOVE, the pages freed): a refused bind changes nothing.
- private MMIO: TDH.MMIO.MAP of the locked TEE MMIO at the guest address (KVM's S-EPT fault
  on the private-MMIO slot, stood in for by :meth:`PlatformTsm.map_private_mmio`).
- guest accept (guest_req STATE_CHANGE START_INTERFACE): the TD's TDG.MMIO.ACCEPT of every
  mapped range, then START_INTERFACE through the module with its nonce.
- unbind, in the firmware's order (KERNEL.md §6): 1. STOP_INTERFACE (relayed); 2. the private
  MMIO out of the S-EPT — TDH.MMIO.BLOCK, TDH.MEM.TRACK, TDH.MMIO.UNMAP, through KVM's hook
  (:attr:`TdxConnectTsm.kvm_mmio_unmap`, when KVM registered one) or the SEAMCALLs directly;
  3. TDH.DMAR.BLOCK, TDH.DMAR.REMOVE; 4. TDH.DEVIF.REMOVE, the metadata pages freed — only
  now does the module release the MMIO (physmem's claim), and the host may touch it again.
- Errors: TDX_OPERAND_BUSY EBUSY, any other status EIO (the RFC's tdx_tsm_* return
  -EBUSY/-EIO the same way; KVM retries on busy).

Locking: see platform.py (bind/unbind/guest_req under pci_tsm_rwsem and the PF0 lock).
Leaves out: TDH.SPDM.*/TDH.IDE.* (connect), TDH.MMIOMT.*, the TD's vCPUs issuing the accept
(the driver does it on the guest's behalf), KVM's retry loop on TDX_OPERAND_BUSY outside
unbind (bind answers EBUSY; unbind's SEAMCALLs are retried a few times: platform.py
call_retrying), the report's verification by the guest (fetched and kept, not checked).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....hw import tdisp
from ....hw.secure.tdx import TdxModule
from ....uapi import kvm as K
from .platform import MmioMap, Platform, PlatformTsm, register_platform

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ....hw.tdi import Tdi
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm
    from .core import PciTdi


@dataclass(frozen=True)
class TdxTdi:
    """The driver's TDI: the function's BDF, its TD, metadata pages, the interface report."""

    bdf: str
    td: str
    metadata: tuple[tuple[int, int], ...]
    report: tdisp.InterfaceReport


class TdxConnectTsm(PlatformTsm):
    name = "tdx-connect"
    CVM_TYPES = (K.KVM_X86_TDX_VM,)
    FIRMWARE = TdxModule

    def __init__(self, kernel: Kernel) -> None:
        super().__init__(kernel)
        self.tdx: TdxModule = self.fw  # type: ignore[assignment]
        # KVM's private-MMIO zap (tdx_sept_remove_private_spte for an MMIO pfn): (td, gpa,
        # size) -> None. Unset: the driver issues the SEAMCALLs itself.
        self.kvm_mmio_unmap: Callable[[str, int, int], None] | None = None

    def _cvm_create(self, kvm: Kvm) -> Any:
        self.call(self.tdx.td_create, kvm.name, kvm.vm_id)
        return kvm.name

    def _cvm_destroy(self, handle: Any) -> None:
        self.call_retrying(self.tdx.td_destroy, handle)

    def _bind(self, pdev: PciDevice, tdi: Tdi, handle: Any, tdi_id: int) -> Any:
        bdf, td, fw = pdev.func.bdf, str(handle), self.tdx
        meta = self.alloc_page(f"devif:{bdf}", 2)
        try:
            self.call(fw.devif_create, bdf, td, tdi, meta)
        except OSError:
            self.free_pages(meta)
            raise
        try:
            self.call(fw.tdi_lock, bdf)
            self.call(fw.dmar_add, bdf, td)
            report = self.fetch_report(tdi.function_id,
                                       lambda m: self.call(fw.devif_request, bdf, m), bdf)
        except OSError:
            self.undo(lambda: fw.tdi_stop(bdf), lambda: self._dmar_clear(bdf),
                      lambda: fw.devif_remove(bdf))
            if fw.devif(bdf) is None:
                self.free_pages(meta)
            raise
        return TdxTdi(bdf, td, tuple(meta), report)

    def _dmar_clear(self, bdf: str) -> None:
        if self.tdx.dmar_entry(bdf) is not None:
            self.tdx.dmar_block(bdf)
            self.tdx.dmar_remove(bdf)

    def _map(self, tdi: PciTdi, m: MmioMap) -> None:
        t: TdxTdi = tdi.priv
        self.call(self.tdx.mmio_map, t.td, m.gpa, m.pa, m.size, t.bdf)

    def _unmap_one(self, td: str, m: MmioMap) -> None:
        if self.kvm_mmio_unmap is not None:
            self.kvm_mmio_unmap(td, m.gpa, m.size)
            return
        self.call_retrying(self.tdx.mmio_block, td, m.gpa, m.size)
        self.call_retrying(self.tdx.mem_track, td)
        self.call_retrying(self.tdx.mmio_unmap, td, m.gpa, m.size)

    def _unmap_partial(self, tdi: PciTdi, done: list[MmioMap]) -> None:
        # TDH.MMIO.UNMAP needs an unlocked TDI: a half-mapped TDI stays blocked in the S-EPT
        # until unbind (chosen; the RFC does not say).
        t: TdxTdi = tdi.priv
        for m in done:
            self.undo(partial(self.tdx.mmio_block, t.td, m.gpa, m.size))
        self.mmio[tdi.pdev.name] = tuple(done)

    def _accept(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> None:
        t: TdxTdi = tdi.priv
        d = self.tdx.devif(t.bdf)
        if d is None or not d.nonce:
            # hw/secure/tdx.py's tdi_start sends an empty nonce (ValueError in the codec)
            # when LOCK's was used up; the module would refuse START: EIO here.
            raise kerr(errno.EIO, f"{self.name}: START of {t.bdf}: the module holds no LOCK "
                       "nonce (the TDI is not CONFIG_LOCKED)")
        for m in mmio:
            self.call(self.tdx.mmio_accept, t.td, m.gpa, m.size)
        self.call(self.tdx.tdi_start, t.bdf)

    def _stop(self, tdi: PciTdi) -> None:
        self.call(self.tdx.tdi_stop, tdi.priv.bdf)

    def _relay(self, tdi: PciTdi, msg: tdisp.Message) -> tdisp.Message:
        rsp: tdisp.Message = self.call(self.tdx.devif_request, tdi.priv.bdf, msg)
        return rsp

    def _unbind(self, tdi: PciTdi, mmio: tuple[MmioMap, ...]) -> bool:
        t: TdxTdi = tdi.priv
        pdev, fw = tdi.pdev, self.tdx
        if not self.step(pdev, "tdi-stop", fw.tdi_stop, t.bdf):
            return False
        for m in mmio:
            if not self.step(pdev, "mmio-unmap", self._unmap_one, t.td, m):
                return False
        if not (self.step(pdev, "dmar-block", fw.dmar_block, t.bdf)
                and self.step(pdev, "dmar-remove", fw.dmar_remove, t.bdf)):
            return False
        try:
            pages = self.call_retrying(fw.devif_remove, t.bdf)
        except OSError as e:
            self.sched.emit("tsm", "unbind-error", dev=pdev.name, step="devif-remove",
                            error=str(e))
            return False
        self.sched.emit("tsm", "unbind-step", dev=pdev.name, step="devif-remove")
        self.free_pages(pages)
        return True

    def guest_mmio_accept(self, pdev: PciDevice) -> None:
        """Only the TD's TDG.MMIO.ACCEPT of the mapped ranges (no START): for scenarios."""
        with self.core.tdi_locked(pdev) as tdi:
            for m in self.mmio.get(pdev.name, ()):
                self.call(self.tdx.mmio_accept, tdi.priv.td, m.gpa, m.size)


def _tdx_module(kernel: Kernel) -> TdxModule:
    return TdxModule(kernel.sched, kernel.phys)


TDX = register_platform(Platform("tdx", _tdx_module, TdxConnectTsm))
