"""struct scatterlist and struct sg_table (include/linux/scatterlist.h, lib/scatterlist.c).

An :class:`SgTable` has two lists in one array of entries, as in the kernel: the CPU list
(``page_link``, ``offset``, ``length``: which memory) counted by ``orig_nents``, and the DMA list
(``dma_address``, ``dma_length``: what the device uses) counted by ``nents``. A DMA-only table
-- what dma_buf_phys_vec_to_sgt() returns for MMIO -- has no CPU list: every ``page_link`` is
NULL and ``orig_nents`` is 0, so importers may use only the DMA list. The model makes the rule
checkable: reading ``page`` or ``page_link`` of an entry of a DMA-only table records
"importer reached for struct page" in ``table.violations`` and calls the caller's
``on_page_access`` (the kernel scrambles page_link under CONFIG_DMABUF_DEBUG instead).

Entries are built from extents, one per contiguous run (never one per page), split so that no
entry exceeds ``max_segment`` (``length``/``dma_length`` are 32-bit; the dma-buf helpers use
MAX_SG_ENT_SZ = ALIGN_DOWN(UINT_MAX, PAGE_SIZE) = 4 GiB - 4 KiB, read in
drivers/dma-buf/dma-buf-mapping.c; sg_alloc_table_from_pages_segment() aligns its max_segment
down to PAGE_SIZE the same way).

C sizes on x86-64 (read in include/linux/scatterlist.h): struct scatterlist is page_link (8),
offset (4), length (4), dma_address (8), dma_length (4, CONFIG_NEED_SG_DMA_LENGTH) and dma_flags
(4, CONFIG_NEED_SG_DMA_FLAGS, else padding) = 32 bytes; struct sg_table is sgl (8), nents (4),
orig_nents (4) = 16 bytes. sg_alloc_table() allocates SG_MAX_SINGLE_ALLOC = PAGE_SIZE / 32 = 128
entries at most per chunk; when more are needed each full chunk gives its last entry to the
chain link (lib/scatterlist.c __sg_alloc_table()), so n entries cost
n + ceil((n - 128) / 127) slots for n > 128. Byte counts here are those struct sizes; slab
rounding of the kmalloc'ed chunks (kmalloc-N size classes) is not counted.

Invariants: no entry is longer than its table's max_segment; a DMA-only table has
``orig_nents`` 0 and no CPU list; ``nents`` <= ``alloc_nents``. Units: bytes (addresses,
lengths, C sizes); entries are :class:`Range` ``(addr, length)``, the kernel's descriptor
convention. Locking: none — a table is built by one caller (an exporter's map) and owned by
the attachment until the unmap frees it; it is not shared state (not tracked), and reaching
for its pages is checked as a rule, not raced.

The model stands for a ``struct page *`` by the physical address of the page. Leaves out:
chained tables built by hand (sg_chain), sg_append_table, SG_DMA_BUS_ADDRESS/SWIOTLB flags,
DMA API debug, scrambling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import repeat
from typing import NamedTuple

PAGE_SIZE = 4096
UINT_MAX = (1 << 32) - 1
MAX_SG_ENT_SZ = UINT_MAX & ~(PAGE_SIZE - 1)  # 0xFFFFF000
SCATTERLIST_SIZE = 32
SG_TABLE_SIZE = 16
SG_MAX_SINGLE_ALLOC = PAGE_SIZE // SCATTERLIST_SIZE  # 128

PAGE_VIOLATION = "importer reached for struct page"



class Range(NamedTuple):
    """One contiguous run, ``(addr, length)`` in bytes: the kernel's descriptor convention
    (sg_dma_address/sg_dma_len, phys_vec, bio_vec; extents.py has the two conventions)."""

    addr: int
    length: int


_range = partial(tuple.__new__, Range)  # a Range from a pair, without the Python-level __new__


def sg_alloc_slots(nents: int) -> int:
    """struct scatterlist slots sg_alloc_table(nents) allocates, chain links included."""
    if nents <= SG_MAX_SINGLE_ALLOC:
        return nents
    chains = -(-(nents - SG_MAX_SINGLE_ALLOC) // (SG_MAX_SINGLE_ALLOC - 1))
    return nents + chains


def sg_table_bytes(nents: int) -> int:
    """Bytes of a struct sg_table with ``nents`` entries: header + chained arrays."""
    return SG_TABLE_SIZE + SCATTERLIST_SIZE * sg_alloc_slots(nents)


def split_segments(addr: int, length: int, max_segment: int) -> Iterator[Range]:
    """``[addr, addr + length)`` cut into pieces of at most ``max_segment`` (fill_sg_entry)."""
    while length:
        n = length if length < max_segment else max_segment
        yield _range((addr, n))
        addr += n
        length -= n


def segments(ranges: Iterable[tuple[int, int]], max_segment: int,
             merge: bool = True) -> list[Range]:
    """One pass over ``ranges`` (buffer order): merge runs that continue the previous one
    (``merge``), then split each at ``max_segment``. O(ranges + splits), never per page."""
    runs: list[tuple[int, int]] = []
    if merge:
        ca = cl = -1
        for a, n in ranges:
            if n <= 0:
                continue
            if a == ca + cl and ca >= 0:
                cl += n
            else:
                if ca >= 0:
                    runs.append((ca, cl))
                ca, cl = a, n
        if ca >= 0:
            runs.append((ca, cl))
    else:
        runs = [(a, n) for a, n in ranges if n > 0]
    if all(n <= max_segment for _, n in runs):
        # The pairs become Ranges in one C-level pass (a table may have 10^5 entries).
        return list(map(tuple.__new__, repeat(Range), runs))
    out: list[Range] = []
    for a, n in runs:
        out.extend(split_segments(a, n, max_segment))
    return out


class Scatterlist:
    """One entry of a table (a view: the table holds the data)."""

    __slots__ = ("table", "index")

    def __init__(self, table: SgTable, index: int) -> None:
        self.table = table
        self.index = index

    @property
    def dma_address(self) -> int:
        d = self.table.dma
        return d[self.index][0] if self.index < len(d) else 0

    @property
    def dma_length(self) -> int:
        d = self.table.dma
        return d[self.index][1] if self.index < len(d) else 0

    @property
    def page(self) -> int | None:
        """sg_page(): the page's physical address; on a DMA-only table, a violation."""
        cpu = self.table.cpu
        if cpu is None:
            self.table.page_access(self.index)
            return None
        a = cpu[self.index][0]
        return a - a % PAGE_SIZE

    @property
    def page_link(self) -> int | None:
        return self.page

    @property
    def offset(self) -> int:
        cpu = self.table.cpu
        return 0 if cpu is None else cpu[self.index][0] % PAGE_SIZE

    @property
    def length(self) -> int:
        cpu = self.table.cpu
        return 0 if cpu is None else cpu[self.index][1]

    def __repr__(self) -> str:
        return f"scatterlist[{self.index}](dma={self.dma_address:#x}+{self.dma_length:#x})"


class SgTable:
    """struct sg_table. ``pages_valid`` True: ``entries`` are the CPU list (physical runs of
    struct-page memory) and ``dma`` the DMA list once mapped (None: not mapped, nents =
    orig_nents as after sg_alloc_table()). ``pages_valid`` False: ``entries`` are the DMA list
    of a DMA-only table; orig_nents is 0.
    """

    def __init__(
        self,
        entries: list[Range],
        pages_valid: bool,
        on_page_access: Callable[[str], None] | None = None,
        dma: list[Range] | None = None,
    ) -> None:
        self.on_page_access = on_page_access
        self.violations: list[str] = []
        if pages_valid:
            self.cpu: list[Range] | None = entries
            self.dma: list[Range] = dma if dma is not None else []
            self.orig_nents = len(entries)
            self.nents = len(self.dma) if dma is not None else len(entries)
            self.alloc_nents = len(entries)
        else:
            if dma is not None:
                raise ValueError("SgTable: a DMA-only table takes its DMA list as entries")
            self.cpu = None
            self.dma = entries
            self.orig_nents = 0
            self.nents = len(entries)
            self.alloc_nents = len(entries)

    @property
    def pages_valid(self) -> bool:
        return self.cpu is not None

    def page_access(self, index: int) -> None:
        msg = f"{PAGE_VIOLATION}: entry {index} of a DMA-only sg_table"
        self.violations.append(msg)
        if self.on_page_access is not None:
            self.on_page_access(msg)

    # ----- iteration (include/linux/scatterlist.h's for_each_* helpers) ------------------
    def __len__(self) -> int:
        return self.alloc_nents

    def __getitem__(self, i: int) -> Scatterlist:
        if not 0 <= i < self.alloc_nents:
            raise IndexError(i)
        return Scatterlist(self, i)

    def __iter__(self) -> Iterator[Scatterlist]:
        """Every allocated entry, like walking ``sgt->sgl`` with sg_next()."""
        return (Scatterlist(self, i) for i in range(self.alloc_nents))

    def for_each_sgtable_sg(self) -> Iterator[Scatterlist]:
        """The CPU list: ``orig_nents`` entries (none on a DMA-only table)."""
        return (Scatterlist(self, i) for i in range(self.orig_nents))

    def for_each_sgtable_dma_sg(self) -> Iterator[Range]:
        """The DMA list as (dma_address, dma_length), without entry views."""
        return iter(self.dma[: self.nents])

    # ----- sizes and conversions ------------------------------------------------------------
    def c_bytes(self) -> int:
        """Bytes the kernel allocates: struct sg_table + chained scatterlist arrays."""
        return sg_table_bytes(self.alloc_nents)

    def dma_length_total(self) -> int:
        return sum(n for _, n in self.dma[: self.nents])

    def dma_extents(self) -> list[Range]:
        return list(self.dma[: self.nents])

    def cpu_extents(self) -> list[Range]:
        if self.cpu is None:
            self.page_access(0)
            return []
        return list(self.cpu)


def sg_table_from_extents(
    extents: Iterable[tuple[int, int]],
    max_segment: int = MAX_SG_ENT_SZ,
    on_page_access: Callable[[str], None] | None = None,
) -> SgTable:
    """A CPU (struct page) table over physical ``extents`` (buffer order): one entry per
    contiguous run, split at ``max_segment`` (sg_alloc_table_from_pages_segment(), but from
    extents instead of a page array)."""
    max_segment &= ~(PAGE_SIZE - 1)
    if max_segment < PAGE_SIZE:
        raise ValueError(f"sg_table_from_extents: max_segment {max_segment:#x} < PAGE_SIZE")
    return SgTable(segments(extents, max_segment), True, on_page_access)
