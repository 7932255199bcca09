"""Physical address vectors and their DMA mapping for MMIO (include/linux/types.h struct
phys_vec, drivers/dma-buf/dma-buf-mapping.c dma_buf_phys_vec_to_sgt()/dma_buf_free_sgt()).

:class:`phys_vec` is ``{paddr, len}``: phys_addr_t and size_t, 16 bytes on x86-64, so a range
of any length is one vector. 7.0 moved it to include/linux/types.h as ``struct phys_vec``;
6.19 called the same thing ``struct dma_buf_phys_vec`` (:data:`dma_buf_phys_vec` here).

:func:`dma_buf_phys_vec_to_sgt` turns an exporter's MMIO ranges into a DMA-only
:class:`~passthru.kernel.dma.scatterlist.SgTable` for an importing device, following the
kernel function read from source:

- no provider: EINVAL (the helper is for MMIO only);
- pci_p2pdma_map_type(provider, dev):
  BUS_ADDR -> each range at its bus address (paddr + bus_offset), no IOVA;
  THRU_HOST_BRIDGE -> dma_iova_try_alloc() for the total size: when the device is behind an
  IOMMU and one IOVA range of that size can be had, every range is linked into it back to
  back and the table has entries spanning that one range; otherwise each range is mapped on
  its own (dma_map_phys with DMA_ATTR_MMIO): an IOVA per range behind an IOMMU, or the
  physical address itself under dma-direct (no IOMMU);
  anything else -> EINVAL;
- entries are cut at MAX_SG_ENT_SZ = ALIGN_DOWN(UINT_MAX, PAGE_SIZE) = 4 GiB - 4 KiB
  (shared/spec/KERNEL.md §1 says "4 GiB - 1"; the source aligns UINT_MAX down to a page);
- nents == 0 (no ranges) or a count overflowing 32 bits: EINVAL (sg_alloc_table);
- a per-range mapping that fails: ENOMEM (dma_mapping_error), after undoing what was mapped;
- orig_nents is set to 0: no CPU list.

The IOVA allocator is :class:`IovaBump`, a bump allocator standing in for dma-iommu until
iommufd and the IOMMU model arrive; it records IOVA -> physical as extents so the checker
can translate DMA addresses back (:meth:`DmaBufSgt.phys_extents`). Without one, the device
uses dma-direct and a DMA address is the physical address (no DMA offset, no mask check).

Invariants: a table's entries cover exactly the vectors' bytes, in order; every IOVA a map
linked is unlinked by dma_buf_free_sgt, once (a second free is EINVAL); the allocator never
hands out an address twice. Units: bytes; addresses are byte addresses; ranges are
(address, length) (:class:`~.scatterlist.Range`, phys_vec).

Which lock protects which field (sim/track.py):
- ``IovaBump.next`` (location ``iova``): the IOVA domain's spinlock (iova_rbtree_lock),
  implicit: an ``atomic`` location;
- ``IovaBump.map`` (``iova.map``, IOVA -> physical): the IOMMU page table's lock, implicit: an
  ``atomic`` map;
- a :class:`DmaBufSgt` (its entries, ``state``, ``per_range_iova``, ``freed``): the mapping's
  owner's — made by one exporter map, freed by the matching unmap, both under the buffer's
  resv lock (kernel/dma_buf asserts it); not shared state;
- ``IovaBump.base``/``limit``/``max_size``: set at creation, read-only.

Leaves out: dma_resv_assert_held (the caller's business: kernel/dma_buf), DMA direction,
dma_iova_sync, swiotlb, DMA masks, -EINTR, the IOVA granule alignment rules of
dma_iova_try_alloc beyond page alignment.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ...errors import kerr
from ...extents import RangeMap
from ...sim import track
from .p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR,
    PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
    PciP2pdmaMapType,
    p2pdma_provider,
    pci_p2pdma_bus_addr_map,
    pci_p2pdma_map_type,
)
from .scatterlist import MAX_SG_ENT_SZ, PAGE_SIZE, UINT_MAX, Range, SgTable, split_segments

PHYS_VEC_SIZE = 16  # phys_addr_t + size_t on x86-64
DMA_BUF_DMA_SIZE = 32  # struct dma_buf_dma: sg_table (16) + state pointer (8) + size (8)
DMA_IOVA_STATE_SIZE = 16  # struct dma_iova_state: addr (8) + __size (8)


class phys_vec(NamedTuple):  # noqa: N801 - kernel name
    paddr: int
    len: int


dma_buf_phys_vec = phys_vec  # the 6.19 name


def phys_vec_array(ranges: Iterable[tuple[int, int]]) -> list[phys_vec]:
    """One vector per range as given (no merging: the exporter's list, e.g. vfio's one per
    requested dma_range)."""
    return list(map(phys_vec._make, ranges))


def phys_vec_bytes(nr_ranges: int) -> int:
    return PHYS_VEC_SIZE * nr_ranges


class IovaBump(track.Tracked):
    """A trivial IOVA allocator: addresses handed out upward from ``base``, page aligned,
    never reused. An allocation fails (None) past ``limit`` or above ``max_size`` (a stand-in
    for a fragmented IOVA space with no hole that large). ``map`` holds IOVA -> physical."""

    def __init__(
        self, base: int = 1 << 32, limit: int = 1 << 48, max_size: int | None = None
    ) -> None:
        self.next = base
        self.limit = limit
        self.max_size = max_size
        self.map: RangeMap[int] = RangeMap(linear=True, label="iova.map", atomic=True)
        self.track_init("iova", atomic=True)

    def alloc(self, size: int) -> int | None:
        size = -(-size // PAGE_SIZE) * PAGE_SIZE
        if size <= 0 or (self.max_size is not None and size > self.max_size):
            return None
        track.write(self)  # the allocator's spinlock (iova_rbtree_lock)
        if self.next + size > self.limit:
            return None
        addr = self.next
        self.next += size
        return addr

    def link(self, iova: int, paddr: int, length: int) -> None:
        self.map.set(iova, iova + length, paddr)

    def unlink(self, iova: int, length: int) -> None:
        self.map.remove(iova, iova + length)

    def iova_to_phys(self, iova: int, length: int) -> list[Range]:
        got = self.map.overlapping(iova, iova + length)
        if sum(e - s for s, e, _ in got) != length:
            raise LookupError(f"IOVA [{iova:#x}, {iova + length:#x}) is not fully mapped")
        return [Range(p, e - s) for s, e, p in got]


class DmaBufSgt(SgTable):
    """struct dma_buf_dma: the DMA-only table plus how it was mapped (``state``: the one
    IOVA range as (addr, size), or None) so that dma_buf_free_sgt() can undo it."""

    def __init__(
        self,
        entries: list[Range],
        on_page_access: Callable[[str], None] | None,
        provider: p2pdma_provider,
        map_type: PciP2pdmaMapType,
        iova: IovaBump | None,
        state: Range | None,
        has_state: bool,
        per_range_iova: list[Range],
    ) -> None:
        super().__init__(entries, False, on_page_access)
        self.provider = provider
        self.map_type = map_type
        self.iova = iova
        self.state = state
        self.has_state = has_state  # a dma_iova_state was allocated (THRU_HOST_BRIDGE)
        self.per_range_iova = per_range_iova
        self.freed = False

    def c_bytes(self) -> int:
        extra = DMA_BUF_DMA_SIZE - 16 + (DMA_IOVA_STATE_SIZE if self.has_state else 0)
        return super().c_bytes() + extra

    def phys_extents(self) -> list[Range]:
        """Model-only: the physical ranges the DMA list reaches (physical truth)."""
        out: list[Range] = []
        for a, n in self.for_each_sgtable_dma_sg():
            if self.map_type == PCI_P2PDMA_MAP_BUS_ADDR:
                out.append(Range(a - self.provider.bus_offset, n))
            elif self.iova is not None and (self.state is not None or self.per_range_iova):
                out.extend(self.iova.iova_to_phys(a, n))
            else:
                out.append(Range(a, n))
        return out


def _calc_sg_nents(use_iova: bool, vecs: list[phys_vec], size: int) -> int:
    if use_iova:
        nents = -(-size // MAX_SG_ENT_SZ)
    else:
        nents = sum(-(-n // MAX_SG_ENT_SZ) for _, n in vecs)
    return 0 if nents > UINT_MAX else nents


def dma_buf_phys_vec_to_sgt(
    dev: Any,
    provider: p2pdma_provider | None,
    vecs: list[phys_vec],
    size: int,
    iova: IovaBump | None = None,
    on_page_access: Callable[[str], None] | None = None,
) -> DmaBufSgt:
    """Map MMIO ``vecs`` of ``provider`` for importing device ``dev`` (the attachment's
    dev). ``iova``: the device's IOVA allocator when it sits behind an IOMMU, else None."""
    if provider is None:
        raise kerr(errno.EINVAL, "dma_buf_phys_vec_to_sgt: no p2pdma provider (MMIO only)")
    mt = pci_p2pdma_map_type(provider, dev)
    state: Range | None = None
    if mt == PCI_P2PDMA_MAP_BUS_ADDR:
        pass
    elif mt == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE:
        if iova is not None:  # dma_iova_try_alloc: only under dma-iommu
            addr = iova.alloc(size)
            if addr is not None:
                state = Range(addr, size)
    else:
        raise kerr(
            errno.EINVAL,
            f"dma_buf_phys_vec_to_sgt: {provider!r} -> {dev!r} is {mt.name}",
        )
    nents = _calc_sg_nents(state is not None, vecs, size)
    if nents == 0:
        raise kerr(errno.EINVAL, "dma_buf_phys_vec_to_sgt: sg_alloc_table with 0 entries")

    entries: list[Range] = []
    per_range: list[Range] = []
    mapped_len = 0
    bus = mt == PCI_P2PDMA_MAP_BUS_ADDR
    for paddr, length in vecs:
        if bus:
            addr = pci_p2pdma_bus_addr_map(provider, paddr)
        elif state is not None:  # dma_iova_link at the next offset of the one range
            assert iova is not None
            iova.link(state[0] + mapped_len, paddr, length)
            mapped_len += length
            continue
        elif iova is not None:  # dma_map_phys through the IOMMU: an IOVA per range
            got = iova.alloc(length)
            if got is None:
                for a, n in per_range:
                    iova.unlink(a, n)
                raise kerr(
                    errno.ENOMEM,
                    f"dma_buf_phys_vec_to_sgt: dma_map_phys of [{paddr:#x}, "
                    f"{paddr + length:#x}) failed (no IOVA)",
                )
            iova.link(got, paddr, length)
            per_range.append(Range(got, length))
            addr = got
        else:  # dma-direct: the DMA address is the physical address
            addr = paddr
        if length <= MAX_SG_ENT_SZ:
            entries.append(Range(addr, length))
        else:
            entries.extend(split_segments(addr, length, MAX_SG_ENT_SZ))
    if state is not None:
        entries.extend(split_segments(state[0], mapped_len, MAX_SG_ENT_SZ))
    return DmaBufSgt(
        entries,
        on_page_access,
        provider,
        mt,
        iova,
        state,
        mt == PCI_P2PDMA_MAP_THRU_HOST_BRIDGE,
        per_range,
    )


def dma_buf_free_sgt(sgt: DmaBufSgt) -> None:
    """Undo dma_buf_phys_vec_to_sgt(): unlink the IOVA (the bump allocator never reuses it)."""
    if sgt.freed:
        raise kerr(errno.EINVAL, "dma_buf_free_sgt: table already freed")
    sgt.freed = True
    if sgt.iova is None:
        return
    if sgt.state is not None:
        sgt.iova.unlink(*sgt.state)
    for a, n in sgt.per_range_iova:
        sgt.iova.unlink(a, n)
