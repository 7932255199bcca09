"""The page cache of one inode as extents (mm/filemap.c, mm/truncate.c).

``pages`` maps file offsets to physical addresses (a linear RangeMap): one extent per
physically contiguous run, never one entry per page. ``mappers`` is the inode's i_mmap (the
VMAs that map it), so truncation can zap their PTEs (unmap_mapping_range); ``invalidators``
are in-kernel users that must drop their translations first (KVM for guest_memfd).

Invariants: ``pages`` extents never overlap; every page in ``pages`` is owned (hw) by this
cache's name until truncation releases it; a range leaves ``pages`` only after every
invalidator and every mapper has dropped its translations of it.

Units: bytes. File offsets index ``pages``; its values are physical addresses. The ranges
handed to :meth:`PageCache.populate` and :meth:`PageCache.truncate_range` are page aligned;
``read``/``write``/``zero`` take any byte range and reach memory through PhysMem's checked
accessors (hw/physmem.py).

Locking (which lock protects which field):
- ``pages`` is the mapping's i_pages xarray: every insertion and removal is under its xa_lock
  and lookups are RCU walks — a spinlock the model leaves implicit, so the map is ``atomic``.
  Truncation against population is the owner's business (guest_memfd's invalidate lock,
  filemap_invalidate_lock; shmem's folio locks and inode lock), taken by the callers.
- ``mappers`` is i_mmap, changed under i_mmap_rwsem for write (vma_link/unlink) and walked
  under it for read (unmap_mapping_range); each access is one step with no scheduling point
  inside, so it is ``atomic`` here. ``invalidators`` likewise.
- ``kernel``, ``name``: set at creation, never rebound.
Leaves out: folio sizes (large folios are just longer extents), LRU, swap, writeback, folio
locks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...extents import RangeMap
from ...hw.physmem import Owner
from ...sim.track import TrackedList

if TYPE_CHECKING:
    from ..core import Kernel
    from .vma import Vma

Invalidator = Callable[[int, int], None]


class PageCache:
    def __init__(self, kernel: Kernel, name: str) -> None:
        self.kernel = kernel
        self.name = name
        self.pages: RangeMap[int] = RangeMap(linear=True, label=f"{name}.pages", atomic=True)
        self.mappers: list[Vma] = TrackedList(label=f"{name}.i_mmap", atomic=True)
        self.invalidators: list[Invalidator] = TrackedList(label=f"{name}.invalidators",
                                                           atomic=True)

    def lookup(self, start: int, end: int) -> list[tuple[int, int, int]]:
        return list(self.pages.overlapping(start, end))

    def populate(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """Allocate the holes of ``[start, end)`` (zeroed) and return all its pieces."""
        added: list[tuple[int, int]] = []
        try:
            for gs, ge in self.pages.gaps(start, end):
                pos = gs
                for ps, pe in self.kernel.phys.alloc(ge - gs, Owner(self.name)):
                    self.pages.set(pos, pos + (pe - ps), ps)
                    added.append((pos, pos + (pe - ps)))
                    pos += pe - ps
        except OSError:
            # shmem_fallocate / shmem_undo_range: a failed call gives back what it added.
            for s, e in added:
                for _, _, p in self.pages.remove(s, e):
                    self.kernel.phys.release(p, p + (e - s))
            raise
        return list(self.pages.overlapping(start, end))

    def truncate_range(self, start: int, end: int) -> None:
        """Drop ``[start, end)``: in-kernel users first, then user PTEs, then the memory."""
        if not self.pages.any_in(start, end):
            return
        for inval in list(self.invalidators):
            inval(start, end)
        for vma in list(self.mappers):
            vma.zap_file_range(start, end)
        for s, e, p in self.pages.remove(start, end):
            self.kernel.phys.release(p, p + (e - s))

    def read(self, off: int, n: int, who: str = "kernel") -> bytes:
        pieces = list(self.pages.overlapping(off, off + n))
        if not pieces:
            return bytes(n)  # a hole reads as zeros (calloc'd: no memory is touched)
        out = bytearray(n)
        for s, e, p in pieces:
            out[s - off : e - off] = self.kernel.phys.read(p, e - s, who)
        return bytes(out)

    def write(self, off: int, data: bytes, start: int, end: int, who: str = "kernel") -> None:
        """Write ``data`` at ``off``; ``[start, end)`` is the page-aligned span to populate."""
        self.populate(start, end)
        for s, e, p in self.pages.overlapping(off, off + len(data)):
            self.kernel.phys.write(p, data[s - off : e - off], who)

    def zero(self, off: int, n: int, who: str = "kernel") -> None:
        """Clear ``[off, off + n)`` in place (the partial pages of a truncation)."""
        for s, e, p in self.pages.overlapping(off, off + n):
            self.kernel.phys.zero(p, p + (e - s), who)

    def has_pins(self) -> bool:
        pins = self.kernel.phys.pins
        return any(pins.any_in(p, p + (e - s)) for s, e, p in self.pages)
