"""memory_chunks and compressed range tables: the seed discussion's replacement for the
scatterlist (shared/spec/KERNEL.md §1, "Physical-address helpers"; not merged, no kernel
file).

A :class:`memory_chunks` is an array of :class:`memory_chunk` ``{provider, bio_vec[]}``, where
``provider`` says what the memory is: None for CPU memory (struct-page RAM), a
:class:`~passthru.kernel.dma.p2pdma.p2pdma_provider` for a peer's MMIO BAR, or a
:class:`Private` marker for memory private to a confidential VM or TDI. From it an importer
can tell P2P-ness (:attr:`memory_chunks.is_p2p`) and CPU-mappability
(:attr:`memory_chunks.cpu_mappable`) without looking at pages, which a scatterlist cannot say.

A :class:`CompressedTable` is the smallest list of physical ranges: one 16-byte entry (u64
address, u64 length) per contiguous range, built in one pass from extents, nothing else -- the
count lives with its owner, as ``nr_ranges`` does for a phys_vec array. It is the "physical
limit" the descriptor benchmark measures the others against.

Units: bytes. Extents are ``(paddr, len)`` pairs in buffer order; "contiguous" means a range
starts where the previous one (in buffer order) ended.

Model choices (unconfirmed: no merged kernel code to read; listed in docs/fidelity.md):
- ``cpu_mappable`` defaults to True for CPU memory and for P2P MMIO (the host CPU can map a BAR,
  uncached, though not with kmap), False for private memory; an exporter may override it;
- C sizes assumed for byte counts: struct bio_vec with a physical address is 16 bytes
  (phys_addr_t + u32 len + u32 flags/pad, the size of today's page-based bio_vec) and its
  length is 32-bit, so a run is cut at ALIGN_DOWN(UINT_MAX, PAGE_SIZE) like a scatterlist
  entry; a chunk header is 16 bytes (provider pointer + u32 nr_bvecs + u32 flags) followed
  by its bio_vecs; the chunks array header is 16 bytes (u32 nr_chunks + pad + pointer).

Invariants: bio_vecs are in buffer order, none longer than BVEC_MAX_LEN, contiguous runs
merged (a compressed table: adjacent entries never continue each other).
Locking: none — a descriptor is built by one caller in one pass and only read afterwards; it
is not shared state (not tracked).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .p2pdma import p2pdma_provider
from .scatterlist import MAX_SG_ENT_SZ, Range, segments

BIO_VEC_SIZE = 16
BVEC_MAX_LEN = MAX_SG_ENT_SZ
MEMORY_CHUNK_HEADER = 16
MEMORY_CHUNKS_HEADER = 16
COMPRESSED_ENTRY_SIZE = 16


@dataclass(frozen=True)
class Private:
    """The 'private' provider marker: memory the host may not touch (``owner`` names whose)."""

    owner: str = ""


PRIVATE = Private()

Provider = p2pdma_provider | Private | None
Extents = Iterable[tuple[int, int]]  # (paddr, len) runs in buffer order: the input of every builder


class bio_vec(NamedTuple):  # noqa: N801 - kernel name (physical-address variant)
    paddr: int
    len: int


class memory_chunk:  # noqa: N801 - seed name
    """One provider's memory: ``bvecs`` in buffer order."""

    __slots__ = ("provider", "bvecs", "_cpu_mappable")

    def __init__(
        self, provider: Provider, bvecs: list[bio_vec], cpu_mappable: bool | None = None
    ) -> None:
        self.provider = provider
        self.bvecs = bvecs
        self._cpu_mappable = cpu_mappable

    @classmethod
    def from_extents(
        cls, extents: Extents, provider: Provider = None, cpu_mappable: bool | None = None
    ) -> memory_chunk:
        """One pass: contiguous runs merged, each cut at BVEC_MAX_LEN."""
        bvecs = list(map(bio_vec._make, segments(extents, BVEC_MAX_LEN)))
        return cls(provider, bvecs, cpu_mappable)

    @property
    def is_p2p(self) -> bool:
        return isinstance(self.provider, p2pdma_provider)

    @property
    def is_private(self) -> bool:
        return isinstance(self.provider, Private)

    @property
    def cpu_mappable(self) -> bool:
        if self._cpu_mappable is not None:
            return self._cpu_mappable
        return not self.is_private

    @property
    def length(self) -> int:
        return sum(b.len for b in self.bvecs)

    def c_bytes(self) -> int:
        return MEMORY_CHUNK_HEADER + BIO_VEC_SIZE * len(self.bvecs)


class memory_chunks:  # noqa: N801 - seed name
    """The buffer: chunks in buffer order."""

    def __init__(self, chunks: list[memory_chunk]) -> None:
        self.chunks = chunks

    @classmethod
    def from_extents(
        cls, extents: Extents, provider: Provider = None, cpu_mappable: bool | None = None
    ) -> memory_chunks:
        return cls([memory_chunk.from_extents(extents, provider, cpu_mappable)])

    def __iter__(self) -> Iterator[memory_chunk]:
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def is_p2p(self) -> bool:
        """Some of the memory is a peer's MMIO: the importer needs P2P support."""
        return any(c.is_p2p for c in self.chunks)

    @property
    def cpu_mappable(self) -> bool:
        """The host CPU may map all of it."""
        return all(c.cpu_mappable for c in self.chunks)

    @property
    def total_length(self) -> int:
        return sum(c.length for c in self.chunks)

    def nr_bvecs(self) -> int:
        return sum(len(c.bvecs) for c in self.chunks)

    def c_bytes(self) -> int:
        return MEMORY_CHUNKS_HEADER + sum(c.c_bytes() for c in self.chunks)

    def extents(self) -> list[Range]:
        return [Range(b.paddr, b.len) for c in self.chunks for b in c.bvecs]


class CompressedTable:
    """One (u64 addr, u64 len) per contiguous range, packed in an array('Q')."""

    __slots__ = ("_q",)

    def __init__(self, q: array[int]) -> None:
        self._q = q

    @classmethod
    def from_extents(cls, extents: Extents) -> CompressedTable:
        flat: list[int] = []
        add = flat.append
        ca = cl = 0
        have = False
        for a, n in extents:
            if n <= 0:
                continue
            if have and a == ca + cl:
                cl += n
                continue
            if have:
                add(ca)
                add(cl)
            ca, cl, have = a, n, True
        if have:
            add(ca)
            add(cl)
        return cls(array("Q", flat))

    def __len__(self) -> int:
        return len(self._q) // 2

    def __iter__(self) -> Iterator[Range]:
        q = self._q
        return map(Range._make, zip(q[0::2], q[1::2], strict=True))

    @property
    def total_length(self) -> int:
        return sum(self._q[1::2])

    def c_bytes(self) -> int:
        return COMPRESSED_ENTRY_SIZE * len(self)

    def extents(self) -> list[Range]:
        return list(self)
