"""kernel/dma: how memory is described to devices (kernel/dma/, lib/scatterlist.c,
drivers/pci/p2pdma.c, drivers/dma-buf/dma-buf-mapping.c).

- :mod:`.p2pdma`: p2pdma_provider and pci_p2pdma_map_type(), the P2P routing decision;
- :mod:`.phys_vec`: phys_vec and dma_buf_phys_vec_to_sgt(), MMIO ranges to a DMA-only table;
- :mod:`.scatterlist`: struct scatterlist / sg_table with C sizes and the page-access rule;
- :mod:`.chunks`: the seed's memory_chunks and the compressed one-entry-per-range table.

Every representation is built from extents ``(paddr, len)`` in buffer order, one entry per
contiguous run (split where a length field is 32-bit): nothing is per page.
"""

from .chunks import PRIVATE, CompressedTable, Private, bio_vec, memory_chunk, memory_chunks
from .p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR,
    PCI_P2PDMA_MAP_NONE,
    PCI_P2PDMA_MAP_NOT_SUPPORTED,
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
    PCI_P2PDMA_MAP_UNKNOWN,
    PciP2pdmaMapType,
    p2pdma_provider,
    pci_p2pdma_map_type,
    pcim_p2pdma_init,
    pcim_p2pdma_provider,
)
from .phys_vec import (
    DmaBufSgt,
    IovaBump,
    dma_buf_free_sgt,
    dma_buf_phys_vec,
    dma_buf_phys_vec_to_sgt,
    phys_vec,
    phys_vec_array,
)
from .scatterlist import MAX_SG_ENT_SZ, SG_MAX_SINGLE_ALLOC, SgTable, sg_table_from_extents

__all__ = [
    "MAX_SG_ENT_SZ",
    "PCI_P2PDMA_MAP_BUS_ADDR",
    "PCI_P2PDMA_MAP_NONE",
    "PCI_P2PDMA_MAP_NOT_SUPPORTED",
    "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE",
    "PCI_P2PDMA_MAP_UNKNOWN",
    "PRIVATE",
    "SG_MAX_SINGLE_ALLOC",
    "CompressedTable",
    "DmaBufSgt",
    "IovaBump",
    "PciP2pdmaMapType",
    "Private",
    "SgTable",
    "bio_vec",
    "dma_buf_free_sgt",
    "dma_buf_phys_vec",
    "dma_buf_phys_vec_to_sgt",
    "memory_chunk",
    "memory_chunks",
    "p2pdma_provider",
    "pci_p2pdma_map_type",
    "pcim_p2pdma_init",
    "pcim_p2pdma_provider",
    "phys_vec",
    "phys_vec_array",
    "sg_table_from_extents",
]
