"""A GPU-like PCIe function: a large prefetchable BAR backed by its own VRAM, and FLR.

No single kernel file: it stands for the devices vfio-pci assigns for their memory (a GPU or
an accelerator whose BAR0 is its device memory; drivers/vfio/pci/vfio_pci_core.c exports such
a BAR as a dma-buf, and kernel/dma_buf/movable.py's exporter conceptually lives in this VRAM).
The IDs are QEMU's standard VGA (1234:1111, whose BAR0 is its VRAM); the capabilities are
those of a modern PCIe GPU: PM (NO_SOFT_RESET set, so D3hot -> D0 keeps state), MSI, PCIe
with DEVCAP.FLR and DEVCAP.TEE (TDISP), and the DOE and IDE extended capabilities (flags
only).

BAR0 (``VRAM_BAR``) is memory: any access size at any offset reads and writes ``vram``.
Other BARs, if the machine gives it any, have no registers (read all ones).

Invariants: ``vram`` holds BAR0's bytes at BAR offsets; unwritten VRAM reads as zero.
Locking: VRAM is device memory — its contents are accessed *marked* (footprints, never data
races), as physmem.data is; the config space and FLR state are hw/pcidev.py's.
Leaves out: engines, command submission, the GPU's own DMA beyond :meth:`PciDevice.dma`,
resizable BAR, SR-IOV; VRAM is not cleared by an FLR or a PM transition (real GPUs keep it;
scrubbing is the driver's business).
"""

from __future__ import annotations

from ...sim.scheduler import Scheduler
from ..iommu import Iommu
from ..pci import PciFunction
from ..pcidev import PciDevice
from ..physmem import Contents, PhysMem
from .fabric import PciFabric

VRAM_BAR = 0


class GpuDevice(PciDevice):
    VENDOR = 0x1234
    DEVICE = 0x1111
    REVISION = 0x02
    CLASS = 0x030000  # display controller, VGA-compatible
    INTERRUPT_PIN = 1
    PREFETCH = frozenset({VRAM_BAR})

    def __init__(self, name: str, func: PciFunction, phys: PhysMem, sched: Scheduler, *,
                 iommu: Iommu | None = None, fabric: PciFabric | None = None) -> None:
        if VRAM_BAR not in func.bars:
            raise ValueError(f"{name}: a GPU needs its VRAM BAR{VRAM_BAR}")
        super().__init__(name, func, phys, sched, iommu=iommu, pm=True, no_soft_reset=True,
                         msi=True, pcie=True, flr=True, doe=True, ide=True, tdisp=True,
                         fabric=fabric)
        self.vram = Contents(label=f"{name}.vram")

    @property
    def vram_size(self) -> int:
        return self.func.bars[VRAM_BAR].size

    def _read_bar(self, bar: int, off: int, n: int) -> bytes:
        if bar == VRAM_BAR:
            return self.vram.read(off, n)
        return super()._read_bar(bar, off, n)

    def _write_bar(self, bar: int, off: int, data: bytes) -> None:
        if bar == VRAM_BAR:
            self.vram.write(off, data)
        else:
            super()._write_bar(bar, off, data)
