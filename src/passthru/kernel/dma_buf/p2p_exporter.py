"""An exporter of a PCI BAR range through the physical route (include/linux/dma-buf-mapping.h,
drivers/dma-buf/dma-buf-mapping.c; the shape of drivers/vfio/pci/vfio_pci_dmabuf.c's map).

The buffer is a list of phys_vec over one BAR of a PCI function, with that BAR's
p2pdma_provider. Mapping it for an importing device asks the topology (hw.pci) how the two
reach each other — pci_p2pdma_map_type: BUS_ADDR through a common switch (bus addresses),
THRU_HOST_BRIDGE through the root complex (physical addresses here, dma-direct; one IOVA range
once an IOMMU is modelled), NOT_SUPPORTED otherwise (EINVAL at map) — and builds the DMA-only
sg_table with dma_buf_phys_vec_to_sgt. Importers must ask for peer2peer (EOPNOTSUPP).

The ops are the static :data:`BAR_OPS`; the export's state (vfio's ``struct
vfio_pci_dma_buf``: the BAR's phys_vec list and provider) is the :class:`BarExporter` in
``dmabuf.priv``.

Invariants: every vector lies inside the BAR; the buffer's size is the sum of its vectors;
each map builds a new table and each unmap frees the table it built.
Units: bytes; ``vecs`` are (physical address, length) — the kernel's phys_vec convention.
Locking: the state is written once, before export, and only read afterwards (map, unmap):
no lock. The p2pdma map-type cache and the IOVA allocator have their own (kernel/dma).
Leaves out: vfio's revoke (the mock exporter has the revoke rules), BAR mmap.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...hw.pci import PciFunction, Topology
from ...sim import kinds
from ..dma.p2pdma import PCI_P2PDMA_MAP_BUS_ADDR, pcim_p2pdma_init, pcim_p2pdma_provider
from ..dma.phys_vec import dma_buf_free_sgt, dma_buf_phys_vec_to_sgt, phys_vec
from . import core
from .core import PINNED, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping, DmaRange

if TYPE_CHECKING:
    from ..core import Kernel

# The violations this file reports (sim/kinds.py).
kinds.register("sgt-page-access", "dma-buf")


class BarExporter:
    """The export's private data: the BAR ranges as phys_vec and the BAR's provider."""

    def __init__(self, kernel: Kernel, topology: Topology, pdev: PciFunction, bar: int,
                 ranges: list[tuple[int, int]]) -> None:
        self.kernel = kernel
        self.topology = topology
        self.pdev = pdev
        b = pdev.bars[bar]
        for off, n in ranges:
            if n <= 0 or off + n > b.size:
                raise kerr(errno.EINVAL, f"BAR{bar} range [{off:#x}, +{n:#x}) past the BAR")
        pcim_p2pdma_init(pdev, topology)
        self.provider = pcim_p2pdma_provider(pdev, bar)
        if self.provider is None:
            raise kerr(errno.EINVAL, f"BAR{bar} of {pdev.bdf} has no p2p provider")
        self.vecs = [phys_vec(b.base + off, n) for off, n in ranges]
        self.size = sum(n for _, n in ranges)


# ----- dma_buf_ops ---------------------------------------------------------------------------
def bar_attach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    if not attach.peer2peer:
        raise kerr(errno.EOPNOTSUPP, f"attach: {buf.name} is MMIO; the importer must "
                   "allow peer2peer")


def bar_map_dma_buf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    exp: BarExporter = attach.dmabuf.priv
    importer = exp.topology.functions.get(attach.dev)  # None: not a PCI device

    def flag(msg: str) -> None:
        exp.kernel.sched.violation("sgt-page-access", f"{attach.dev}: {msg}")

    sgt = dma_buf_phys_vec_to_sgt(importer, exp.provider, exp.vecs, exp.size,
                                  on_page_access=flag)
    bus = sgt.map_type == PCI_P2PDMA_MAP_BUS_ADDR
    off = exp.provider.bus_offset if exp.provider is not None else 0
    ranges = [DmaRange(a, n, a - off if bus else a) for a, n in sgt.for_each_sgtable_dma_sg()]
    return DmaMapping(ranges, sgt)


def bar_unmap_dma_buf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    dma_buf_free_sgt(mapping.sgt)


def bar_release(buf: DmaBuf) -> None:
    pass


BAR_OPS = DmaBufOps(attach=bar_attach, map_dma_buf=bar_map_dma_buf,
                    unmap_dma_buf=bar_unmap_dma_buf, release=bar_release,
                    memory_model=PINNED, exp_name="pci-bar")


def bar_dmabuf(kernel: Kernel, topology: Topology, pdev: PciFunction, bar: int,
               ranges: list[tuple[int, int]]) -> DmaBuf:
    exp = BarExporter(kernel, topology, pdev, bar, ranges)
    return core.dma_buf_export(kernel, BAR_OPS, exp.size, priv=exp)
