"""The io_pagetable: an IOAS's areas, reserved and allowed IOVA ranges, domains and accesses
(drivers/iommu/iommufd/io_pagetable.c, io_pagetable.h).

An area maps ``[iova, last]`` to ``length`` bytes of an :class:`IoptPages` from
``start_byte``. Every attached domain holds a copy of every area's translation; while the IOAS
has at least one domain each area is *filled* (one holder of its pages: pinned and charged).

IOVA rules (KERNEL.md §3), in the kernel's order:
- iova_alignment starts at 1 (no domain: IOVA_RANGES is [0, 2^64-1]); attaching a domain
  raises it to the domain's smallest page size (more than PAGE_SIZE: EINVAL; an existing area
  it would misalign: EADDRINUSE) and reserves the aperture's outside (conflicts: EADDRINUSE);
- a map's length must be a non-zero multiple of the alignment (EINVAL);
- automatic IOVA (iopt_alloc_iova): never 0, inside the allowed ranges (all of
  [PAGE_SIZE, ULONG_MAX - PAGE_SIZE] when none), outside reserved ranges and areas, aligned to
  min(roundup_pow_of_two(length), the lowest set bit of the source address) capped at the
  huge page size (PAGE_SIZE without THP), ENOSPC when nothing fits, EINVAL when that
  alignment is below iova_alignment;
- FIXED iova: misaligned EINVAL, wrapping EOVERFLOW, reserved EINVAL, over an area EEXIST.
Unmap (iopt_unmap_iova_range) removes whole areas inside the range one by one — an area only
partly inside is ENOENT *after* the ones before it are gone (not all-or-nothing, as the real
kernel); a range with nothing in it unmaps 0 bytes (IOAS_UNMAP makes that ENOENT, the VFIO
compat unmap succeeds, as since the 2025 "unmap of empty" change); an area being mapped or
locked EBUSY; an area an access pins is announced to every
access (its ``unmap`` op must drop the pins) and retried, EDEADLOCK after 100 tries.

Invariants: areas never overlap; no area overlaps a reserved range; every domain maps exactly
the filled areas; an area is filled iff the IOAS has a domain. Units: IOVAs, lengths and byte
offsets; ``last`` is inclusive as in the kernel's interval trees.
Locking (asserted as the kernel asserts): ``areas``, ``reserved``, ``allowed``,
``iova_alignment`` under ``iova_rwsem``; ``domains`` and area filling under ``domains_rwsem``
(write to add/remove a domain) with the pages' mutex for each area; ``accesses`` under both.
Filling a domain maps each physically contiguous run of an area with one iommu_map call, or,
while huge pages are disabled (IOMMU_OPTION_HUGE_PAGES 0), PAGE_SIZE at a time
(batch_to_domain / batch_iommu_map_small, pages.c): the domain's leaf PTEs follow those calls.
Leaves out: area splitting for the VFIO compat path (iopt_cut_iova), the pfn batch's own
limits on a run (a run is split only where its pages are), the per-group reserved regions of
real IOMMUs (the mock's come from selftest.py through :meth:`IoPagetable.reserve_iova`).
"""

from __future__ import annotations

import errno
import heapq
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....extents import RangeMap
from ....hw.iommu import IOMMU_MMIO, IOMMU_WRITE
from ....sim import track
from ....sim.fields import Plain
from ....sim.locks import RwSem
from ....sim.track import TrackedList
from ...lockdep_assert import lockdep_assert_held, lockdep_assert_held_write
from ...mm.mm import PAGE
from .pages import ULONG_MAX, IoptPages

if TYPE_CHECKING:
    from ...core import Kernel

HPAGE_SIZE = 2 << 20  # PMD size: the cap of automatic IOVA alignment with THP
UNMAP_TRIES = 100  # iopt_unmap_iova_range's retries while accesses do not let go


def roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def ffs_align(x: int) -> int:
    """1 << __ffs64(x): the largest power of two dividing ``x`` (x != 0)."""
    return x & -x


class Area(track.Tracked):
    """struct iopt_area: ``[iova, last]`` onto ``pages`` from ``start_byte``. The fields that
    change after creation are tracked (sim/fields.py), each its own part of the area's
    location: ``pages`` (NULL while being made or unmapped) and ``prevent_access`` under
    iova_rwsem, ``filled`` under the pages' mutex, ``num_accesses``/``num_locks`` under
    iova_rwsem and the pages' mutex."""

    pages = Plain[IoptPages | None]((0, 1))
    filled = Plain[bool]((1, 2))
    num_accesses = Plain[int]((2, 3))
    num_locks = Plain[int]((3, 4))
    prevent_access = Plain[bool]((4, 5))

    def __init__(self, iova: int, length: int, pages: IoptPages | None, start_byte: int,
                 prot: int) -> None:
        self.track_init(f"area@{iova:#x}")
        self.iova = iova
        self.last = iova + length - 1
        self.pages = pages  # None while the area is being set up (IOVA reserved only)
        self.start_byte = start_byte
        self.prot = prot
        self.filled = False  # holds its pages for the IOAS's domains
        self.num_accesses = 0
        self.num_locks = 0
        self.prevent_access = False

    @property
    def length(self) -> int:
        return self.last - self.iova + 1

    def __repr__(self) -> str:
        return f"<area [{self.iova:#x}, {self.last:#x}]>"

    def page_range(self) -> tuple[int, int]:
        assert self.pages is not None
        return self.pages.page_range(self.start_byte, self.length)


@dataclass(frozen=True)
class Reserved:
    """struct iopt_reserved: ``[start, last]`` held by ``owner`` (a domain, a device, None
    for the test mock's ADD_RESERVED)."""

    start: int
    last: int
    owner: Any


@dataclass
class PagesSlice:
    """struct iopt_pages_list: ``length`` bytes of ``pages`` at ``start_byte``."""

    pages: IoptPages
    start_byte: int
    length: int
    area: Area | None = None


class IoPagetable(track.Tracked):
    """struct io_pagetable (``iova_alignment`` and ``disable_large_pages`` tracked fields,
    written under iova_rwsem held for write)."""

    iova_alignment = Plain[int]((0, 1))
    disable_large_pages = Plain[bool]((1, 2))

    def __init__(self, kernel: Kernel, label: str) -> None:
        self.track_init(label)
        self.kernel = kernel
        self.label = label
        s = kernel.sched
        self.iova_rwsem = RwSem(s, f"{label}.iova_rwsem", "iopt->iova_rwsem")
        self.domains_rwsem = RwSem(s, f"{label}.domains_rwsem", "iopt->domains_rwsem")
        self.areas: RangeMap[Area] = RangeMap(label=f"{label}.area_itree")
        # The union of the areas, coalesced (same lock): the IOVA allocator's first fit walks
        # its spans, not every area, so packed areas cost one span.
        self.used: RangeMap[bool] = RangeMap(label=f"{label}.area_span")
        self.reserved: list[Reserved] = TrackedList(label=f"{label}.reserved_itree")
        self.allowed: list[tuple[int, int]] = TrackedList(label=f"{label}.allowed_itree")
        self.domains: list[Any] = TrackedList(label=f"{label}.domains")
        self.accesses: list[Any] = TrackedList(label=f"{label}.access_list")
        self.iova_alignment = 1
        self.disable_large_pages = False
        self.thp = True

    # ----- lookups (iova_rwsem held) ------------------------------------------------------
    def area_at(self, start: int, last: int) -> Area | None:
        """iopt_area_iter_first: the lowest area overlapping ``[start, last]``."""
        hit = self.areas.overlapping(start, last + 1)
        return hit[0].value if hit else None

    def reserved_in(self, start: int, last: int) -> Reserved | None:
        return next((r for r in self.reserved if r.start <= last and start <= r.last), None)

    def allowed_in(self, start: int, last: int) -> bool:
        return any(a <= last and start <= b for a, b in self.allowed)

    def iova_ranges(self) -> list[tuple[int, int]]:
        """The holes of the reserved ranges over [0, ULONG_MAX] (IOAS_IOVA_RANGES)."""
        out = []
        pos = 0
        for r in sorted(self.reserved, key=lambda r: r.start):
            if r.start > pos:
                out.append((pos, r.start - 1))
            pos = max(pos, r.last + 1)
        if pos <= ULONG_MAX:
            out.append((pos, ULONG_MAX))
        return out

    # ----- IOVA allocation ----------------------------------------------------------------
    def alloc_iova(self, addr: int, length: int) -> int:
        """iopt_alloc_iova: the lowest suitable hole (iova_rwsem held for write)."""
        lockdep_assert_held(self.iova_rwsem, "iopt_alloc_iova")
        page_offset = addr % PAGE
        if length == 0 or length >= ULONG_MAX // 2:
            raise kerr(errno.EOVERFLOW, f"iopt_alloc_iova: length {length:#x} out of range")
        align = roundup_pow_of_two(length)
        if addr:
            align = min(align, ffs_align(addr))
        cap = HPAGE_SIZE if self.thp else PAGE
        align = min(align, cap)
        if align < self.iova_alignment:
            raise kerr(errno.EINVAL, f"iopt_alloc_iova: alignment {align:#x} of the source "
                       f"is below the IOAS's iova_alignment {self.iova_alignment:#x}")
        spans = sorted(self.allowed) or [(PAGE, ULONG_MAX - PAGE)]
        reserved = sorted((r.start, r.last + 1) for r in self.reserved)
        for a_start, a_last in spans:
            a_start, a_last = max(a_start, PAGE), min(a_last, ULONG_MAX - PAGE)
            if a_start > a_last:
                continue
            # First fit over the holes between reserved ranges and areas, merged lazily
            # (interval_tree_for_each_double_span): stops at the first hole that fits.
            used = heapq.merge(reserved, self.used.iter_from(a_start, a_last + 1))
            pos = a_start
            for u_start, u_end in itertools.chain(used, [(a_last + 1, a_last + 1)]):
                if u_start > pos:
                    cand = ((pos + align - 1) // align * align) | page_offset
                    if cand < pos:
                        cand += align
                    hole_last = min(u_start - 1, a_last)
                    if cand <= hole_last and hole_last - cand >= length - 1:
                        return cand
                pos = max(pos, u_end)
                if pos > a_last:
                    break
        raise kerr(errno.ENOSPC, f"iopt_alloc_iova: no free IOVA range of {length:#x} bytes "
                   f"aligned to {align:#x}")

    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova: a FIXED iova (iova_rwsem held)."""
        lockdep_assert_held(self.iova_rwsem, "iopt_check_iova")
        if iova & (self.iova_alignment - 1):
            raise kerr(errno.EINVAL, f"IOVA {iova:#x} is not aligned to the IOAS's "
                       f"iova_alignment {self.iova_alignment:#x}")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise kerr(errno.EOVERFLOW, f"IOVA {iova:#x} + {length:#x} overflows")
        r = self.reserved_in(iova, last)
        if r is not None:
            raise kerr(errno.EINVAL, f"[{iova:#x}, {last:#x}] overlaps the reserved range "
                       f"[{r.start:#x}, {r.last:#x}]")
        a = self.area_at(iova, last)
        if a is not None:
            raise kerr(errno.EEXIST, f"[{iova:#x}, {last:#x}] overlaps the mapped {a!r}")

    # ----- map ------------------------------------------------------------------------------
    def map_pages(self, slices: list[PagesSlice], length: int, iova: int | None,
                  prot: int, addr: int) -> int:
        """iopt_map_pages: allocate the areas (IOVA reserved), fill every domain, publish.
        ``iova`` None allocates one (from source address ``addr``). Returns the IOVA."""
        kernel = self.kernel
        for _ in slices:
            if kernel.sched.fault("kzalloc"):
                raise kerr(errno.ENOMEM, "iopt_alloc_area_pages: kzalloc of an area failed "
                           "(injected)")
        with self.iova_rwsem.write():
            if length & (self.iova_alignment - 1) or not length:
                raise kerr(errno.EINVAL, f"length {length:#x} is 0 or not a multiple of the "
                           f"IOAS's iova_alignment {self.iova_alignment:#x}")
            if iova is None:
                iova = self.alloc_iova(addr, length)
            else:
                self.check_iova(iova, length)
            pos = iova
            for sl in slices:
                if prot & IOMMU_WRITE and not sl.pages.writable:
                    self._abort(slices)
                    raise kerr(errno.EPERM, "iopt_insert_area: a writable map of read-only "
                               "pages")
                if (sl.start_byte % PAGE) & (self.iova_alignment - 1):
                    self._abort(slices)
                    raise kerr(errno.EINVAL, f"page offset {sl.start_byte % PAGE:#x} is not "
                               f"aligned to iova_alignment {self.iova_alignment:#x}")
                sl.area = Area(pos, sl.length, None, sl.start_byte, prot)
                self.areas.set(pos, pos + sl.length, sl.area)
                self.used.set(pos, pos + sl.length, True)
                pos += sl.length
        with self.domains_rwsem.read():
            done: list[PagesSlice] = []
            try:
                for sl in slices:
                    assert sl.area is not None
                    self.fill_area(sl.area, sl.pages)
                    done.append(sl)
            except OSError:
                for sl in done:
                    assert sl.area is not None
                    self.unfill_area(sl.area, sl.pages)
                self._abort(slices)
                raise
            with self.iova_rwsem.write():
                for sl in slices:
                    assert sl.area is not None
                    sl.area.pages = sl.pages.get()  # the area's own reference
        return iova

    def _abort(self, slices: list[PagesSlice]) -> None:
        """iopt_abort_area for each slice's area (iova_rwsem held or taken)."""
        for sl in slices:
            if sl.area is not None:
                self.areas.remove(sl.area.iova, sl.area.last + 1)
                self.used.remove(sl.area.iova, sl.area.last + 1)
                sl.area = None

    def fill_area(self, area: Area, pages: IoptPages) -> None:
        """iopt_area_fill_domains: pin the area's pages and map them into every domain
        (domains_rwsem held). Nothing to do without a domain (lazy)."""
        lockdep_assert_held(self.domains_rwsem, "iopt_area_fill_domains")
        if not self.domains:
            return
        lo, hi = pages.page_range(area.start_byte, area.length)
        with pages.mutex:
            pages.hold(lo, hi, "iopt_area_fill_domains")
            mapped: list[Any] = []
            try:
                for d in self.domains:
                    self._map_into(d, area, pages)
                    mapped.append(d)
            except OSError:
                for d in mapped:
                    self._unmap_from(d, area, pages)
                pages.release(lo, hi)
                raise
            area.filled = True

    def unfill_area(self, area: Area, pages: IoptPages) -> None:
        """iopt_area_unfill_domains: unmap from every domain, drop the pin."""
        lockdep_assert_held(self.domains_rwsem, "iopt_area_unfill_domains")
        if not area.filled:
            return
        with pages.mutex:
            for d in self.domains:
                self._unmap_from(d, area, pages)
            pages.release(*pages.page_range(area.start_byte, area.length))
            area.filled = False

    def _map_into(self, domain: Any, area: Area, pages: IoptPages) -> None:
        """iopt_area_fill_domain for one domain (pages->mutex held): a dma-buf area is first
        tracked (iopt_dmabuf_track_domain) so a revoke can find every domain it is in."""
        if self.kernel.sched.fault("iommu_map"):
            raise kerr(errno.ENOMEM, f"iommu_map of {area!r} failed (injected)")
        dmabuf = pages.dmabuf if pages.kind == "dmabuf" else None
        if dmabuf is not None:
            dmabuf.track_domain(area, domain)
        prot = area.prot | (IOMMU_MMIO if dmabuf is not None else 0)
        # batch_to_domain: one iommu_map per contiguous run, or batch_iommu_map_small's
        # PAGE_SIZE calls while large pages are disabled
        step = PAGE if self.disable_large_pages else 0
        done = 0
        try:
            for s, e, p in pages.pfns(area.start_byte, area.start_byte + area.length):
                domain.map_pages(area.iova + (s - area.start_byte), p, e - s, prot, step)
                done = e - area.start_byte
        except (OSError, ValueError) as err:
            if done:
                domain.unmap_pages(area.iova, done)
                domain.iotlb_sync()
            if dmabuf is not None:
                dmabuf.untrack_domain(area, domain)
            raise kerr(errno.EINVAL, f"iommu_map of {area!r}: {err}") from None

    def _unmap_from(self, domain: Any, area: Area, pages: IoptPages) -> None:
        """iopt_area_unmap_domain (pages->mutex held): the PTEs, the IOTLB, the tracker."""
        domain.unmap_pages(area.iova, area.length)
        domain.iotlb_sync()
        if pages.kind == "dmabuf":
            pages.dmabuf.untrack_domain(area, domain)

    # ----- unmap ----------------------------------------------------------------------------
    def unmap_iova(self, iova: int, length: int) -> int:
        """iopt_unmap_iova: whole areas inside ``[iova, iova + length)``; bytes unmapped."""
        if not length:
            raise kerr(errno.EINVAL, "IOAS_UNMAP: length 0")
        if iova + length - 1 > ULONG_MAX:
            raise kerr(errno.EOVERFLOW, f"IOAS_UNMAP: {iova:#x} + {length:#x} overflows")
        return self.unmap_range(iova, iova + length - 1)

    def unmap_all(self) -> int:
        """iopt_unmap_all: nothing mapped is success (0 bytes)."""
        return self.unmap_range(0, ULONG_MAX)

    def unmap_range(self, start: int, last: int) -> int:
        """iopt_unmap_iova_range: see the module docstring. Whole areas removed before a
        failure stay removed (the kernel is not all-or-nothing here)."""
        unmapped = 0
        tries = 0
        while True:
            with self.domains_rwsem.read():
                self.iova_rwsem.down_write()
                try:
                    while (area := self.area_at(start, last)) is not None:
                        if area.pages is None:
                            raise kerr(errno.EBUSY, f"IOAS_UNMAP: {area!r} is being mapped")
                        if area.num_locks:  # before the split check, as the kernel
                            raise kerr(errno.EBUSY, f"IOAS_UNMAP: {area!r} is locked by an "
                                       "in-kernel user (a vIOMMU HW queue)")
                        if area.iova < start or area.last > last:
                            raise kerr(errno.ENOENT, f"IOAS_UNMAP: [{start:#x}, {last:#x}] "
                                       f"would split {area!r}"
                                       + (f" ({unmapped:#x} bytes before it already "
                                          "unmapped)" if unmapped else ""))
                        if area.num_accesses:
                            break  # notify the accesses outside the locks, then retry
                        pages = area.pages
                        area.pages = None
                        self.areas.remove(area.iova, area.last + 1)
                        self.used.remove(area.iova, area.last + 1)
                        self.iova_rwsem.up_write()
                        try:
                            self.unfill_area(area, pages)
                            pages.put()
                        finally:
                            self.iova_rwsem.down_write()
                        unmapped += area.length
                    else:
                        return unmapped  # 0 when nothing was there: the callers decide
                    area.prevent_access = True
                    first, alen = area.iova, area.length
                    start = first
                finally:
                    if self.iova_rwsem.held_for_write():
                        self.iova_rwsem.up_write()
            notify_unmap(self, first, alen)
            tries += 1
            if tries > UNMAP_TRIES:
                raise kerr(errno.EDEADLOCK, f"IOAS_UNMAP: an access still pins "
                           f"[{first:#x}, +{alen:#x}) after {UNMAP_TRIES} unmap notifications")

    # ----- splitting (the VFIO type1 compatibility path) -------------------------------------
    def cut_iova(self, iovas: list[int]) -> None:
        """iopt_cut_iova: split the area containing each of ``iovas`` so that it ends there
        (iopt_area_split); an IOVA at an area's first or last byte needs no cut."""
        with self.iova_rwsem.write():
            for iova in iovas:
                area = self.area_at(iova, iova)
                if area is not None:
                    self._area_split(area, iova)

    def _area_split(self, area: Area, iova: int) -> None:
        """iopt_area_split: ``area`` becomes ``[area.iova, iova]`` and ``[iova + 1, last]``
        over the same pages (the right half takes a new pages reference); EBUSY while the
        area is being made or unmapped, EINVAL when the cut is misaligned, an access pins it,
        or a domain may hold it with large pages."""
        lockdep_assert_held_write(self.iova_rwsem, "iopt_area_split")
        if iova in (area.iova, area.last):
            return
        pages = area.pages
        if pages is None or area.prevent_access:
            raise kerr(errno.EBUSY, f"split of {area!r}: it is being mapped or unmapped")
        new_start = iova + 1
        align = self.iova_alignment
        if new_start & (align - 1) or (area.start_byte + new_start - area.iova) & (align - 1):
            raise kerr(errno.EINVAL, f"split of {area!r} at {iova:#x}: not aligned to "
                       f"{align:#x}")
        for _ in range(2):
            if self.kernel.sched.fault("kzalloc"):
                raise kerr(errno.ENOMEM, "iopt_area_split: kzalloc failed (injected)")
        with pages.mutex:
            if area.num_accesses:
                raise kerr(errno.EINVAL, f"split of {area!r}: an access pins it")
            if area.filled and not self.disable_large_pages:
                raise kerr(errno.EINVAL, f"split of {area!r}: a domain may map it with large "
                           "pages")
            lhs = Area(area.iova, new_start - area.iova, pages, area.start_byte, area.prot)
            rhs = Area(new_start, area.last - iova, pages.get(),
                       area.start_byte + (new_start - area.iova), area.prot)
            lhs.filled = rhs.filled = area.filled
            if area.filled:
                # Each half holds its own page range; a cut inside a page (a 2 KiB mock
                # domain) leaves that page in both, so it gets a second holder (no new pin).
                lo, hi = rhs.page_range()[0], lhs.page_range()[1]
                if lo < hi:
                    pages.hold(lo, hi, "iopt_area_split")
            self.areas.set(lhs.iova, lhs.last + 1, lhs)
            self.areas.set(rhs.iova, rhs.last + 1, rhs)

    # ----- allowed and reserved ranges ------------------------------------------------------
    def set_allow_iova(self, ranges: list[tuple[int, int]]) -> None:
        """iopt_set_allow_iova: swap in the new tree; EADDRINUSE if it meets a reserved
        range (the old tree stays)."""
        with self.iova_rwsem.write():
            for a, b in ranges:
                r = self.reserved_in(a, b)
                if r is not None:
                    raise kerr(errno.EADDRINUSE, f"IOAS_ALLOW_IOVAS: [{a:#x}, {b:#x}] meets "
                               f"the reserved [{r.start:#x}, {r.last:#x}]")
            self.allowed[:] = sorted(ranges)

    def reserve_iova(self, start: int, last: int, owner: Any) -> None:
        """iopt_reserve_iova (iova_rwsem held for write): EADDRINUSE over an area or an
        allowed range."""
        lockdep_assert_held_write(self.iova_rwsem, "iopt_reserve_iova")
        a = self.area_at(start, last)
        if a is not None or self.allowed_in(start, last):
            what = repr(a) if a is not None else "an allowed range"
            raise kerr(errno.EADDRINUSE, f"reserve [{start:#x}, {last:#x}]: {what} is there")
        if self.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "iopt_reserve_iova: kzalloc failed (injected)")
        self.reserved.append(Reserved(start, last, owner))

    def remove_reserved(self, owner: Any) -> None:
        """__iopt_remove_reserved_iova (iova_rwsem held for write)."""
        lockdep_assert_held_write(self.iova_rwsem, "__iopt_remove_reserved_iova")
        self.reserved[:] = [r for r in self.reserved if r.owner is not owner]

    # ----- domains ----------------------------------------------------------------------------
    def table_add_domain(self, domain: Any) -> None:
        """iopt_table_add_domain: raise the alignment, reserve the aperture's outside, fill
        the domain with every area (pinning them if it is the first). On failure nothing
        changed."""
        with self.domains_rwsem.write(), self.iova_rwsem.write():
            if any(d is domain for d in self.domains):
                raise kerr(errno.EEXIST, "iopt_table_add_domain: domain already attached")
            align = max(domain.pgsize, self.iova_alignment)
            if align > PAGE:
                raise kerr(errno.EINVAL, f"domain page size {domain.pgsize:#x} above PAGE_SIZE")
            if align != self.iova_alignment:
                self.check_iova_alignment(align)
            start, last = domain.aperture
            try:
                if start != 0:
                    self.reserve_iova(0, start - 1, domain)
                if last != ULONG_MAX:
                    self.reserve_iova(last + 1, ULONG_MAX, domain)
                self.fill_domain(domain)
            except OSError:
                self.remove_reserved(domain)
                raise
            self.iova_alignment = align
            self.domains.append(domain)

    def fill_domain(self, domain: Any) -> None:
        """iopt_fill_domain: map every area into ``domain``; undo on failure."""
        first = not self.domains
        done: list[Area] = []
        try:
            for ext in list(self.areas):
                area = ext.value
                pages = area.pages
                if pages is None:
                    continue
                with pages.mutex:
                    if first:
                        pages.hold(*area.page_range(), "iopt_fill_domain")
                    try:
                        self._map_into(domain, area, pages)
                    except OSError:
                        if first:
                            pages.release(*area.page_range())
                        raise
                    if first:
                        area.filled = True
                done.append(area)
        except OSError:
            for area in done:
                assert area.pages is not None
                with area.pages.mutex:
                    self._unmap_from(domain, area, area.pages)
                    if first:
                        area.pages.release(*area.page_range())
                        area.filled = False
            raise

    def table_remove_domain(self, domain: Any) -> None:
        """iopt_table_remove_domain: unmap every area from ``domain`` (unpinning with the
        last domain), drop its reserved ranges, recompute the alignment."""
        with self.domains_rwsem.write(), self.iova_rwsem.write():
            if not any(d is domain for d in self.domains):
                return
            self.domains[:] = [d for d in self.domains if d is not domain]
            last = not self.domains
            for ext in list(self.areas):
                area = ext.value
                pages = area.pages
                if pages is None:
                    continue
                with pages.mutex:
                    self._unmap_from(domain, area, pages)
                    if last and area.filled:
                        pages.release(*area.page_range())
                        area.filled = False
            self.remove_reserved(domain)
            self.calculate_iova_alignment()

    def check_iova_alignment(self, align: int) -> None:
        """iopt_check_iova_alignment: every area (and access) fits ``align``."""
        mask = align - 1
        for ext in self.areas:
            a = ext.value
            if a.iova & mask or a.length & mask or (a.start_byte % PAGE) & mask:
                raise kerr(errno.EADDRINUSE, f"{a!r} is not aligned to the new iova_alignment "
                           f"{align:#x}")
        for acc in self.accesses:
            if acc.iova_alignment > align:
                raise kerr(errno.EADDRINUSE, "an access needs a larger iova_alignment")

    def calculate_iova_alignment(self) -> None:
        """iopt_calculate_iova_alignment (iova_rwsem held for write)."""
        align = PAGE if self.disable_large_pages else 1
        for d in self.domains:
            align = max(align, d.pgsize)
        for acc in self.accesses:
            align = max(align, acc.iova_alignment)
        if align > self.iova_alignment:
            self.check_iova_alignment(align)
        self.iova_alignment = align

    # ----- accesses -------------------------------------------------------------------------
    def add_access(self, access: Any) -> None:
        """iopt_add_access."""
        with self.domains_rwsem.write(), self.iova_rwsem.write():
            self.accesses.append(access)
            try:
                self.calculate_iova_alignment()
            except OSError:
                self.accesses.remove(access)
                raise

    def remove_access(self, access: Any) -> None:
        """iopt_remove_access."""
        with self.domains_rwsem.write(), self.iova_rwsem.write():
            self.accesses.remove(access)
            self.calculate_iova_alignment()


def notify_unmap(iopt: IoPagetable, iova: int, length: int) -> None:
    """iommufd_access_notify_unmap: tell every access of the IOAS that ``[iova, +length)``
    goes away; each must unpin what it holds there (its ops' unmap)."""
    for access in list(iopt.accesses):
        access.notify_unmap(iova, length)

