"""A process address space: VMAs, PTEs filled on fault, mmap/munmap (mm/mmap.c, mm/memory.c,
mm/vma.c).

Invariants: VMAs never overlap and are page aligned; a VMA's PTEs are extents
(virtual -> physical, linear) inside it. File PTEs point into the file's page cache and are
zapped when the file drops that range; private (anonymous or copy-on-write) pages belong to
the VMA and are freed with it. A VM_IO|VM_PFNMAP VMA holds *special* PTEs: no struct page
behind them, so GUP refuses them (mm/gup.c).

Units: user (virtual) addresses and lengths in bytes, page aligned once mmap/munmap have
rounded them; ``Vma.pgoff`` is the file offset of ``start`` in bytes (the kernel's is in
pages); PTE values are physical addresses. Every load or store through a PTE reaches memory
through PhysMem's checked accessors (hw/physmem.py), the kernel's copy-on-write included.

Locking (which lock protects which field):
- the VMA tree (``Mm._starts``/``_vmas`` and its gap index ``Mm._free``, one tracked location
  per mm, and each VMA's bounds, flags and ``anon_vma``): ``mmap_lock`` (an rw_semaphore) —
  write for mmap/munmap/exit, read for faults and GUP. :meth:`Mm.resolve` is the fault path
  (handle_mm_fault) and asserts mmap_lock (lockdep_assert_held, read or write) like GUP's
  mmap_assert_locked.
- ``Vma.ptes``/``Vma.anon`` (the page tables): changed under the page-table lock (PTL, a
  spinlock) with mmap_lock held, or under i_mmap_rwsem by unmap_mapping_range; the PTL is
  implicit in the model, so they are ``atomic``. A CPU's load or store through a PTE is
  hardware: the physical access it ends in is judged by physical truth (hw/physmem.py).
- ``Mm.notifiers`` (the mmu_notifier subscriptions, kernel/mm/mmu_notifier.py): changed
  under the subscriptions' spinlock (registration also holds mmap_lock for write) and walked
  under the notifier SRCU: ``atomic`` there.
- ``Vma.file``/``pgoff``/``writable_counted``: set while the VMA is made or split, under
  ``mmap_lock`` held for write, like its bounds.
- ``Mm.proc``, ``kernel``, ``who``, ``mmap_lock``: set at creation, never rebound.
Scale: lookup, insertion, removal and the gap search are O(log n) in the number of VMAs
(bisect on sorted arrays, plus a list memmove); a new private anonymous mapping merges with
touching VMAs of the same flags as vma_merge_new_range does.
Leaves out: merging of file mappings, anon_vma reuse by a neighbour (find_mergeable_anon_vma:
here two VMAs written separately keep distinct anon_vmas), mprotect, mremap, THP, NUMA
policy, the zero page (unpopulated private memory reads as zeros without allocating), stack
guard gaps, per-VMA locks, the mmu_notifier SRCU.
"""

from __future__ import annotations

import errno
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...hw.physmem import Owner
from ...sim import track
from ...sim.locks import RwSem
from ...uapi import linux as L
from ..fs.file import FMODE_READ, FMODE_WRITE
from ..lockdep_assert import lockdep_assert_held, lockdep_assert_held_write
from .memfd import I_MMAP_WRITABLE, MemfdFile

# include/linux/mm.h's names, defined in mm.py; importers may take them from here too.
from .mm import (
    PAGE,
    VM_DONTDUMP,
    VM_DONTEXPAND,
    VM_EXEC,
    VM_IO,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_PFNMAP,
    VM_READ,
    VM_SHARED,
    VM_WRITE,
    page_down,
    page_up,
)
from .mmu_notifier import Invalidate, MmuNotifierSubscriptions

if TYPE_CHECKING:
    from ..fs.file import File
    from ..fs.process import Process

# include/linux/mman.h LEGACY_MAP_MASK: what MAP_SHARED_VALIDATE accepts (x86-64 values)
LEGACY_MAP_MASK = (
    L.MAP_SHARED | L.MAP_PRIVATE | L.MAP_FIXED | L.MAP_ANONYMOUS | 0x0800 | 0x1000 | 0x4000000
    | 0x0100 | 0x2000 | L.MAP_NORESERVE | L.MAP_POPULATE | 0x10000 | 0x20000 | 0x40000
)
MMAP_BASE = 0x7F0000000000
ULONG_MASK = (1 << 64) - 1  # the syscalls' unsigned long arguments
MMAP_MIN_ADDR = 0x10000


class _FreeAreas:
    """The gaps between VMAs inside ``[MMAP_MIN_ADDR, MMAP_BASE)`` (the maple tree's gap
    tracking, what unmapped_area_topdown searches): coalesced free extents in sorted parallel
    arrays, and per size class (``size.bit_length()``) a sorted list of their ends, so the
    highest gap that fits is found in O(log n) (plus the few same-class gaps above it)."""

    def __init__(self) -> None:
        self._starts: list[int] = [MMAP_MIN_ADDR]
        self._ends: list[int] = [MMAP_BASE]
        self._by_end: dict[int, int] = {MMAP_BASE: MMAP_MIN_ADDR}  # end -> start
        self._classes: dict[int, list[int]] = {}  # size class -> sorted ends
        self._index(MMAP_MIN_ADDR, MMAP_BASE)

    def _index(self, s: int, e: int) -> None:
        insort(self._classes.setdefault((e - s).bit_length(), []), e)

    def _unindex(self, s: int, e: int) -> None:
        c = self._classes[(e - s).bit_length()]
        del c[bisect_left(c, e)]

    def _drop(self, i: int) -> tuple[int, int]:
        s, e = self._starts.pop(i), self._ends.pop(i)
        del self._by_end[e]
        self._unindex(s, e)
        return s, e

    def _add(self, s: int, e: int) -> None:
        i = bisect_left(self._starts, s)
        self._starts.insert(i, s)
        self._ends.insert(i, e)
        self._by_end[e] = s
        self._index(s, e)

    def carve(self, start: int, end: int) -> None:
        """A VMA now covers ``[start, end)``."""
        start, end = max(start, MMAP_MIN_ADDR), min(end, MMAP_BASE)
        if start >= end:
            return
        i = max(bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            if self._ends[i] <= start:
                i += 1
                continue
            s, e = self._drop(i)
            if s < start:
                self._add(s, start)
                i += 1
            if e > end:
                self._add(end, e)
                i += 1

    def release(self, start: int, end: int) -> None:
        """``[start, end)`` is no longer covered by any VMA."""
        start, end = max(start, MMAP_MIN_ADDR), min(end, MMAP_BASE)
        if start >= end:
            return
        i = bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == end:
            end = self._drop(i)[1]
        if i > 0 and self._ends[i - 1] == start:
            start = self._drop(i - 1)[0]
        self._add(start, end)

    def find_top(self, length: int) -> int | None:
        """unmapped_area_topdown: the end of the highest gap of at least ``length`` bytes."""
        c = length.bit_length()
        best: int | None = None
        for k, ends in self._classes.items():
            if k > c and ends and (best is None or ends[-1] > best):
                best = ends[-1]  # every gap of a larger class fits
        ends = self._classes.get(c, [])
        for j in range(len(ends) - 1, -1, -1):
            e = ends[j]
            if best is not None and e <= best:
                break
            if e - self._by_end[e] >= length:
                best = e
                break
        return best



class Vma:
    def __init__(
        self, mm: Mm, start: int, end: int, vm_flags: int, file: File | None, pgoff: int
    ) -> None:
        self.mm = mm
        self.start = start
        self.end = end
        self.vm_flags = vm_flags
        self.file = file
        self.pgoff = pgoff  # file offset of ``start``, bytes
        where = f"proc {mm.proc.name}.vma@{start:#x}"
        # shared/file/pfn pages, and the private pages owned by this VMA
        self.ptes: RangeMap[int] = RangeMap(linear=True, label=f"{where}.ptes", atomic=True)
        self.anon: RangeMap[int] = RangeMap(linear=True, label=f"{where}.anon", atomic=True)
        self.writable_counted = False  # counted in the file's i_mmap_writable
        # vm_operations_struct's open (a split copies the VMA) and close (the VMA goes), for
        # drivers whose mappings hold a reference (iommufd's MMIO pages); None: no vm_ops.
        self.vm_ops: Any = None
        # the anon_vma: made at the first private page (anon_vma_prepare), shared by the
        # pieces of a split and kept by a merge; two different ones keep VMAs apart.
        self.anon_vma: object | None = None

    def __repr__(self) -> str:
        return f"<Vma [{self.start:#x}, {self.end:#x}) flags={self.vm_flags:#x}>"

    @property
    def special(self) -> bool:
        return bool(self.vm_flags & (VM_IO | VM_PFNMAP))

    def foff(self, addr: int) -> int:
        return self.pgoff + (addr - self.start)

    def zap_file_range(self, fstart: int, fend: int) -> None:
        """unmap_mapping_range: drop PTEs for file range ``[fstart, fend)``."""
        vs = self.start + max(fstart - self.pgoff, 0)
        ve = self.start + min(fend - self.pgoff, self.end - self.start)
        if vs < ve:
            self.mm.notify_invalidate(vs, ve)
            self.ptes.remove(vs, ve)

    def remap_pfn_range(self, addr: int, phys: int, size: int) -> None:
        """Install special PTEs (VM_IO|VM_PFNMAP), as drivers do for MMIO and heaps."""
        self.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        self.ptes.set(addr, addr + size, phys)


class Mm(track.Tracked):
    """mm_struct of one process."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.kernel = proc.kernel
        # VMAs sorted by start (the kernel's maple tree): parallel arrays searched by bisect.
        self._starts: list[int] = []
        self._vmas: list[Vma] = []
        self._free = _FreeAreas()  # the tree's gaps below MMAP_BASE, same lock
        self.mmap_lock = RwSem(proc.kernel.sched, f"{proc.name}.mmap_lock", "mmap_lock")
        self.who = f"cpu:{proc.name}"
        # mmu_notifier subscribers (KVM), called with the user range whose PTEs go away.
        self.notifiers = MmuNotifierSubscriptions(f"proc {proc.name}.mmu_notifiers")
        self.track_init(f"proc {proc.name}.vmas")  # the VMA tree (mm->mm_mt)

    def notify_invalidate(self, start: int, end: int) -> None:
        """mmu_notifier_invalidate_range_start/end: the subscribers ``[start, end)`` concerns."""
        self.notifiers.invalidate(start, end)

    def mmu_notifier_register(self, fn: Invalidate, ranged: bool = False) -> int:
        """mmu_notifier_register: subscribe with mmap_lock held for write; the id to
        unregister with (and, for a ``ranged`` subscriber, to file ranges under)."""
        self.mmap_lock.down_write()
        try:
            lockdep_assert_held_write(self.mmap_lock, "__mmu_notifier_register")
            return self.notifiers.register(fn, ranged)
        finally:
            self.mmap_lock.up_write()

    def mmu_notifier_unregister(self, sid: int) -> None:
        """mmu_notifier_unregister: under the subscriptions' spinlock only."""
        self.notifiers.unregister(sid)

    # ----- lookup ------------------------------------------------------------------------
    @property
    def vmas(self) -> dict[int, Vma]:
        """start -> VMA, in address order (a snapshot)."""
        track.read(self)
        return dict(zip(self._starts, self._vmas, strict=True))

    def find_vma(self, addr: int) -> Vma | None:
        track.read(self, addr, addr + 1)
        i = bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        v = self._vmas[i]
        return v if addr < v.end else None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        track.read(self, start, end)
        i = max(bisect_right(self._starts, start) - 1, 0)
        j = bisect_left(self._starts, end)
        return [v for v in self._vmas[i:j] if v.end > start]

    def _insert_vma(self, vma: Vma) -> None:
        lockdep_assert_held_write(self.mmap_lock, "vma_link")
        track.write(self, vma.start, vma.end)
        i = bisect_left(self._starts, vma.start)
        self._starts.insert(i, vma.start)
        self._vmas.insert(i, vma)
        self._free.carve(vma.start, vma.end)

    def _remove_vma(self, vma: Vma) -> None:
        lockdep_assert_held_write(self.mmap_lock, "vma_unlink")
        track.write(self, vma.start, vma.end)
        i = bisect_left(self._starts, vma.start)
        assert self._vmas[i] is vma
        del self._starts[i], self._vmas[i]
        self._free.release(vma.start, vma.end)

    def _free_area(self, length: int) -> int:
        # Top-down below MMAP_BASE: the highest gap that fits (mm/mmap.c's unmapped_area_topdown).
        track.read(self)
        top = self._free.find_top(length)
        if top is None:
            raise kerr(errno.ENOMEM, f"mmap: no free range of {length:#x} bytes")
        return top - length

    # ----- mmap / munmap ---------------------------------------------------------------
    def mmap(
        self, addr: int, length: int, prot: int, flags: int, file: File | None, offset: int
    ) -> int:
        # The syscall's addr and len are unsigned longs: a negative length is a huge one.
        addr &= ULONG_MASK
        length &= ULONG_MASK
        if length == 0:
            raise kerr(errno.EINVAL, "mmap: length is 0")
        if offset & (PAGE - 1):
            raise kerr(errno.EINVAL, f"mmap: offset {offset:#x} not page aligned")
        maptype = flags & L.MAP_TYPE
        if maptype not in (L.MAP_SHARED, L.MAP_PRIVATE, L.MAP_SHARED_VALIDATE):
            raise kerr(errno.EINVAL, f"mmap: flags {flags:#x} are neither MAP_SHARED nor PRIVATE")
        length = page_up(length) & ULONG_MASK  # PAGE_ALIGN may wrap to 0: ENOMEM
        if length > L.TASK_SIZE or length == 0:
            raise kerr(errno.ENOMEM, f"mmap: length {length:#x} exceeds the address space")
        if offset < 0 or (offset + length) >> 63:
            # pgoff is unsigned: a negative off_t is a huge offset (file_mmap_ok).
            raise kerr(errno.EOVERFLOW, f"mmap: offset {offset:#x} + length past the maximum "
                       "file size")
        fixed = bool(flags & (L.MAP_FIXED | L.MAP_FIXED_NOREPLACE))
        if fixed and addr & (PAGE - 1):
            raise kerr(errno.EINVAL, f"mmap: MAP_FIXED address {addr:#x} not page aligned")
        shared = maptype != L.MAP_PRIVATE
        vm_flags = VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
        vm_flags |= VM_READ if prot & L.PROT_READ else 0
        vm_flags |= VM_WRITE if prot & L.PROT_WRITE else 0
        vm_flags |= VM_EXEC if prot & L.PROT_EXEC else 0
        if file is not None:
            if maptype == L.MAP_SHARED_VALIDATE and flags & ~LEGACY_MAP_MASK:
                raise kerr(errno.EOPNOTSUPP, f"mmap: MAP_SHARED_VALIDATE with unknown flags "
                           f"{flags & ~LEGACY_MAP_MASK:#x}")
            if not file.f_mode & FMODE_READ:
                raise kerr(errno.EACCES, "mmap: file not open for reading")
            if file.noexec:
                if prot & L.PROT_EXEC:
                    raise kerr(errno.EPERM, "mmap: PROT_EXEC of a file on a noexec mount")
                vm_flags &= ~VM_MAYEXEC
            if shared:
                if prot & L.PROT_WRITE and not file.f_mode & FMODE_WRITE:
                    raise kerr(errno.EACCES, "mmap: MAP_SHARED|PROT_WRITE on a read-only fd")
                vm_flags |= VM_SHARED | VM_MAYSHARE
                if not file.f_mode & FMODE_WRITE:
                    vm_flags &= ~VM_MAYWRITE
        elif shared:
            vm_flags |= VM_SHARED | VM_MAYSHARE
        self.mmap_lock.down_write()
        try:
            if fixed:
                if flags & L.MAP_FIXED_NOREPLACE and self.vmas_in(addr, addr + length):
                    raise kerr(errno.EEXIST, f"mmap: MAP_FIXED_NOREPLACE at {addr:#x} in use")
                if addr + length > L.TASK_SIZE or addr < MMAP_MIN_ADDR:
                    raise kerr(errno.EPERM if addr < MMAP_MIN_ADDR else errno.ENOMEM,
                               f"mmap: fixed range at {addr:#x} outside the user address space")
            else:
                addr = self._free_area(length)
            vma = Vma(self, addr, addr + length, vm_flags, file, offset)
            if file is None and shared:
                # shmem_zero_setup: shared anonymous memory is an unlinked shmem file.
                file = MemfdFile(self.kernel, "dev/zero", L.O_RDWR, size=length)
                vma.file = file
                vma.pgoff = 0
                file.mmap(self.proc, vma)
            elif file is not None:
                file.mmap(self.proc, vma)  # may refuse (ENODEV, EINVAL, EPERM) or adjust flags
                file.get()
            if fixed:
                self._unmap(addr, addr + length)
            if vma.file is None and not shared and self._merge_new_range(vma):
                pass  # vma_merge_new_range: a neighbour grew over the range instead
            else:
                self._insert_vma(vma)
                if vma.file is not None:
                    self._link_file(vma)
                self.kernel.track("vma", +1)
        finally:
            self.mmap_lock.up_write()
        self.kernel.sched.emit("mm", "mmap", addr=addr, len=length, prot=prot, flags=flags)
        return addr

    def _merge_new_range(self, new: Vma) -> bool:
        """vma_merge_new_range (mm/vma.c) for a private anonymous mapping: grow the previous
        and/or next VMA over ``new``'s free range when they are private anonymous with the
        same flags and touch it; merge both only if their anon_vmas are compatible (one
        absent, or the same). True if merged (``new`` is then not used)."""
        lockdep_assert_held_write(self.mmap_lock, "vma_merge_new_range")
        start, end = new.start, new.end
        i = bisect_left(self._starts, end)
        nxt = self._vmas[i] if i < len(self._vmas) and self._starts[i] == end else None
        prev = self._vmas[i - 1] if i > 0 and self._vmas[i - 1].end == start else None

        def ok(v: Vma | None) -> bool:
            return (v is not None and v.file is None and v.vm_flags == new.vm_flags
                    and not v.vm_flags & (VM_SHARED | VM_IO | VM_PFNMAP))

        left = ok(prev)
        right = ok(nxt) and (not left or prev.anon_vma is None  # type: ignore[union-attr]
                             or nxt.anon_vma is None  # type: ignore[union-attr]
                             or prev.anon_vma is nxt.anon_vma)  # type: ignore[union-attr]
        if not left and not right:
            return False
        track.write(self, start, end)  # a neighbour's bounds move over the range
        if left and right:
            assert prev is not None and nxt is not None
            self._remove_vma(nxt)
            for s, e, p in nxt.anon.remove(nxt.start, nxt.end):
                prev.anon.set(s, e, p)
            for s, e, p in nxt.ptes.remove(nxt.start, nxt.end):
                prev.ptes.set(s, e, p)
            prev.anon_vma = prev.anon_vma or nxt.anon_vma
            prev.end = nxt.end
            self._free.carve(start, prev.end)  # next's range came back free on removal
            self.kernel.track("vma", -1)
        elif left:
            assert prev is not None
            prev.end = end
            self._free.carve(start, end)
        else:
            assert nxt is not None
            nxt.start = start
            nxt.pgoff -= end - start
            self._starts[i] = start
            self._free.carve(start, end)
        return True

    def _link_file(self, vma: Vma) -> None:
        cache = getattr(vma.file, "cache", None)
        if cache is not None:
            cache.mappers.append(vma)
        if vma.vm_flags & VM_SHARED and vma.vm_flags & VM_MAYWRITE:
            track.write_once(vma.file, *I_MMAP_WRITABLE)  # mapping_map_writable: atomic_t
            vma.file.i_mmap_writable += 1  # type: ignore[union-attr]
            vma.writable_counted = True

    def munmap(self, addr: int, length: int) -> None:
        # do_vmi_munmap, on the syscall's unsigned longs (a negative value is a huge one).
        addr &= ULONG_MASK
        length &= ULONG_MASK
        if addr & (PAGE - 1):
            raise kerr(errno.EINVAL, f"munmap: address {addr:#x} not page aligned")
        if addr > L.TASK_SIZE or length > L.TASK_SIZE - addr:
            raise kerr(errno.EINVAL, "munmap: range beyond the user address space")
        if length == 0:
            raise kerr(errno.EINVAL, "munmap: length is 0")
        length = page_up(length)
        self.mmap_lock.down_write()
        try:
            self._unmap(addr, addr + length)
        finally:
            self.mmap_lock.up_write()
        self.kernel.sched.emit("mm", "munmap", addr=addr, len=length)

    def _unmap(self, start: int, end: int) -> None:
        # Split off the parts that stay, left edge first (the right piece may need the second).
        for vma in self.vmas_in(start, end):
            if vma.start < start:
                self._split(vma, start)
        for vma in self.vmas_in(start, end):
            if vma.end > end:
                self._split(vma, end)
        for vma in self.vmas_in(start, end):
            self._destroy(vma)

    def _split(self, vma: Vma, at: int) -> None:
        track.write(self, at, vma.end)  # vma.end moves: a change of the tree
        right = Vma(self, at, vma.end, vma.vm_flags, vma.file, vma.foff(at))
        right.anon_vma = vma.anon_vma
        right.vm_ops = vma.vm_ops
        if right.vm_ops is not None:
            right.vm_ops.open(right)
        for s, e, p in vma.ptes.remove(at, vma.end):
            right.ptes.set(s, e, p)
        for s, e, p in vma.anon.remove(at, vma.end):
            right.anon.set(s, e, p)
        vma.end = at
        self._insert_vma(right)
        self.kernel.track("vma", +1)
        if right.file is not None:
            right.file.get()
            self._link_file(right)

    def _destroy(self, vma: Vma) -> None:
        self.notify_invalidate(vma.start, vma.end)
        self._remove_vma(vma)
        vma.ptes.clear()
        if vma.vm_ops is not None:
            vma.vm_ops.close(vma)
        for s, e, p in vma.anon.remove(vma.start, vma.end):
            self.kernel.phys.release(p, p + (e - s))
        if vma.file is not None:
            cache = getattr(vma.file, "cache", None)
            if cache is not None:
                cache.mappers.remove(vma)
            if vma.writable_counted:
                track.write_once(vma.file, *I_MMAP_WRITABLE)
                vma.file.i_mmap_writable -= 1  # type: ignore[attr-defined]
            vma.file.put()
        self.kernel.track("vma", -1)

    def exit_mmap(self) -> None:
        """exit_mmap: tear every VMA down with mmap_lock held for write."""
        self.mmap_lock.down_write()
        try:
            track.read(self)
            for vma in list(self._vmas):
                self._destroy(vma)
        finally:
            self.mmap_lock.up_write()

    # ----- faults and access -------------------------------------------------------------
    def _fault(self, vma: Vma, start: int, end: int, write: bool,
               unshare: bool = False) -> list[tuple[int, int, int]]:
        """Resolve virtual ``[start, end)`` (page aligned, inside vma) to physical pieces."""
        out: list[tuple[int, int, int]] = []
        holes: Iterable[tuple[int, int]]
        private = not vma.vm_flags & VM_SHARED
        if private:
            for s, e, p in vma.anon.overlapping(start, end):
                out.append((s, e, p))
            holes = vma.anon.gaps(start, end)
        else:
            holes = [(start, end)]
        for hs, he in holes:
            if private and (write or (unshare and vma.file is not None)):
                # Copy-on-write: private pages take a copy of what the file (or zero) shows.
                if vma.anon_vma is None:
                    vma.anon_vma = object()  # anon_vma_prepare
                src = b""
                if vma.file is not None:
                    src = self._read_file_pages(vma, hs, he)
                pos = hs
                for ps, pe in self.kernel.phys.alloc(he - hs, Owner(f"anon:{self.proc.name}")):
                    vma.anon.set(pos, pos + (pe - ps), ps)
                    if src:
                        self.kernel.phys.write(ps, src[pos - hs : pos - hs + (pe - ps)], "kernel")
                    pos += pe - ps
                out.extend(vma.anon.overlapping(hs, he))
                continue
            if vma.file is None:
                out.append((hs, he, -1))  # unpopulated private anonymous memory reads as zero
                continue
            for ps, pe in vma.ptes.gaps(hs, he):
                # vm_ops->fault; for VM_PFNMAP drivers it inserts a pfn (vmf_insert_pfn) or
                # gives SIGBUS.
                pieces = vma.file.fault(vma, vma.foff(ps), vma.foff(pe), write and not private)
                for fs, fe, phys in pieces:
                    vs = vma.start + (fs - vma.pgoff)
                    if not private:
                        vma.ptes.set(vs, vs + (fe - fs), phys)
                    else:
                        out.append((vs, vs + (fe - fs), phys))
            if not private:
                out.extend(vma.ptes.overlapping(hs, he))
        out.sort()
        return out

    def _read_file_pages(self, vma: Vma, start: int, end: int) -> bytes:
        """What the file shows at virtual ``[start, end)``: the source of a copy-on-write
        (zeros past its end), read by the kernel (cow_user_page)."""
        assert vma.file is not None
        buf = bytearray(end - start)
        try:
            pieces = vma.file.fault(vma, vma.foff(start), vma.foff(end), False)
        except Fault:
            return bytes(buf)
        phys = self.kernel.phys
        for fs, fe, p in pieces:
            vs = vma.start + (fs - vma.pgoff)
            buf[vs - start : vs - start + (fe - fs)] = phys.read(p, fe - fs, "kernel")
        return bytes(buf)

    def resolve(self, addr: int, n: int, write: bool,
                unshare: bool = False) -> list[tuple[int, int, int]]:
        """Fault in ``[addr, addr+n)`` and return (vstart, vend, phys) pieces, clipped: the
        fault path (handle_mm_fault, and GUP's faultin_page), mmap_lock held. ``unshare``
        (FAULT_FLAG_UNSHARE, a long-term read pin) gives private file pages their anonymous
        copy now, so a later CPU write does not copy again under the pin."""
        lockdep_assert_held(self.mmap_lock, "handle_mm_fault")
        end = addr + n
        out: list[tuple[int, int, int]] = []
        pos = addr
        while pos < end:
            vma = self.find_vma(pos)
            if vma is None:
                raise Fault(pos, "SIGSEGV", "no mapping")
            need = VM_WRITE if write else VM_READ
            if not vma.vm_flags & need:
                raise Fault(pos, "SIGSEGV", f"{'write' if write else 'read'} not permitted")
            stop = min(end, vma.end)
            for s, e, p in self._fault(vma, page_down(pos), page_up(stop), write, unshare):
                cs, ce = max(s, pos), min(e, stop)
                if cs < ce:
                    out.append((cs, ce, -1 if p < 0 else p + (cs - s)))
            pos = stop
        return out

    def access(
        self, addr: int, n: int, write: bool, data: bytes | None = None, who: str | None = None
    ) -> bytes:
        """A CPU load/store of ``n`` bytes at user address ``addr`` (peek/poke)."""
        if n < 0 or addr < 0 or addr + n > L.TASK_SIZE:
            raise Fault(addr, "SIGSEGV", "address outside the user address space")
        if n == 0:
            return b""
        who = who or self.who
        self.mmap_lock.down_read()
        try:
            pieces = self.resolve(addr, n, write)
        finally:
            self.mmap_lock.up_read()
        phys = self.kernel.phys
        if write:
            assert data is not None and len(data) == n
            for s, e, p in pieces:
                phys.write(p, data[s - addr : e - addr], who)
            return b""
        out = bytearray(n)
        for s, e, p in pieces:
            if p >= 0:
                out[s - addr : e - addr] = phys.read(p, e - s, who)
        return bytes(out)
