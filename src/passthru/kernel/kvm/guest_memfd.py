"""guest_memfd: memory for a VM that the host need not map (virt/kvm/guest_memfd.c, 6.18).

A GmemFile holds a page cache of extents and the list of memslot *bindings* (which file
ranges back which slot). The file pins its VM (``kvm.get()``), never the other way round: a
memslot does not hold the file, and releasing the file unbinds its slots.

Rules (kvm_gmem_create, kvm_gmem_mmap, kvm_gmem_fallocate, kvm_gmem_fault_user_mapping):
- flags beyond the VM's supported set, size 0 or unaligned: EINVAL; reserved[] not checked;
- read/write: no such methods (EINVAL); ftruncate: EINVAL (kvm_gmem_setattr); ioctl: none
  (kvm_gmem_fops has no unlocked_ioctl: ENOTTY through an empty table);
- mmap: needs GUEST_MEMFD_FLAG_MMAP (ENODEV) and MAP_SHARED (EINVAL);
- a host fault on a page that is not shared (no INIT_SHARED) or past the size: SIGBUS;
- fallocate: KEEP_SIZE required and no other mode bit (EOPNOTSUPP), page aligned (EINVAL),
  inside the size (EINVAL); PUNCH_HOLE invalidates KVM's mappings of bound slots first
  (invalidate_begin: zap + mmu_invalidate_in_progress), then frees, then invalidate_end.

Invariants: a file range is bound to at most one slot (``bindings`` never overlap); a bound
slot's ``gmem`` is this file until unbind or release; the file holds one VM reference.
Units: ``i_size``, file offsets and ``Binding.start``/``end`` are bytes.
Locking (which lock protects which field): ``invalidate_lock`` (filemap_invalidate_lock, an
rw_semaphore) —
- ``bindings`` (gmem_file->bindings): written under it for write (kvm_gmem_bind,
  kvm_gmem_unbind, kvm_gmem_release: asserted in :meth:`GmemFile._set_binding`), read under it
  by punch hole (kvm_gmem_invalidate_begin/end: lockdep_assert_held_write); release's
  xa_destroy comes after the unlock, when no one else can reach the file (as upstream);
- ``cache`` (population and truncation): fallocate and kvm_gmem_get_pfn populate under it for
  read (asserted in :meth:`GmemFile._populate`), punch hole truncates under it for write
  (it takes the lock itself, around the invalidation). The host's fault populates under the
  folio lock upstream; the model has no folio locks (the page cache's xarray is atomic,
  filemap.py), and upstream kvm_gmem_get_pfn serialises against truncation with the folio lock
  (filemap_lock_folio) where the model takes invalidate_lock for read;
- ``Memslot.gmem``: written with WRITE_ONCE under it for write (memslots.py, asserted);
  kvm_gmem_release also holds ``kvm.slots_lock`` so that no memslot update unbinds
  concurrently, and invalidates through the mmu_invalidate protocol (mmu.py);
- ``i_size``, ``gflags``, ``kvm``: set at creation, immutable.
Leaves out: in-place shared/private conversion (later proposals), hugepage support, NUMA
mempolicy, arch prepare/invalidate hooks (RMP updates), several VMs per inode.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...sim.locks import RwSem
from ...uapi import kvm as K
from ...uapi import linux as L
from ..fs.file import File, no_such_ioctl
from ..fs.ioctl_table import IoctlTable
from ..lockdep_assert import lockdep_assert_held, lockdep_assert_held_write
from ..mm.filemap import PageCache
from ..mm.mm import VM_DONTDUMP, VM_MAYSHARE, VM_SHARED

if TYPE_CHECKING:
    from ..fs.process import Process
    from ..mm.vma import Vma
    from .kvm_main import Kvm
    from .memslots import Memslot

PAGE = L.PAGE_SIZE

# kvm_gmem_fops has no unlocked_ioctl: every request is ENOTTY. Future guest_memfd ioctls
# (the in-place conversion series) register here.
KVM_GMEM_IOCTLS = IoctlTable("guest_memfd", no_such_ioctl)


@dataclass
class Binding:
    slot: Memslot
    start: int  # file offset, bytes
    end: int


class GmemFile(File):
    kind = "guest_memfd"
    regular = True  # an S_IFREG anon inode: ftruncate reaches kvm_gmem_setattr (EINVAL)
    ioctl_table = KVM_GMEM_IOCTLS

    def __init__(self, kvm: Kvm, size: int, flags: int) -> None:
        super().__init__(kvm.kernel, L.O_RDWR | L.O_CLOEXEC, f"gmem{kvm.kernel.next_id('gmem')}")
        self.kvm = kvm.get()
        self.i_size = size
        self.gflags = flags
        self.cache = PageCache(kvm.kernel, f"{self.name}@vm{kvm.vm_id}")
        self.bindings: RangeMap[Binding] = RangeMap(label=f"{self.name}.bindings")
        self.invalidate_lock = RwSem(self.kernel.sched, f"{self.name}.invalidate_lock",
                                     "mapping.invalidate_lock")
        self.i_mmap_writable = 0
        kvm.gmem_files.append(self)

    def size(self) -> int:
        return self.i_size

    @property
    def shared(self) -> bool:
        return bool(self.gflags & K.GUEST_MEMFD_FLAG_INIT_SHARED)

    def truncate(self, length: int) -> None:
        raise kerr(errno.EINVAL, "ftruncate: guest_memfd size is fixed (kvm_gmem_setattr)")

    def mmap(self, proc: Process, vma: Vma) -> None:
        if not self.gflags & K.GUEST_MEMFD_FLAG_MMAP:
            raise kerr(errno.ENODEV, "mmap: guest_memfd created without GUEST_MEMFD_FLAG_MMAP")
        if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) != (VM_SHARED | VM_MAYSHARE):
            raise kerr(errno.EINVAL, "mmap: guest_memfd needs MAP_SHARED")
        vma.vm_flags |= VM_DONTDUMP

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        addr = vma.start + (start - vma.pgoff)
        if end > self.i_size:
            raise Fault(vma.start + (max(start, self.i_size) - vma.pgoff), "SIGBUS",
                        "guest_memfd fault past its size")
        if not self.shared:
            raise Fault(addr, "SIGBUS", "guest_memfd page is private to the guest")
        return self.cache.populate(start, end)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        if not mode & L.FALLOC_FL_KEEP_SIZE:
            raise kerr(errno.EOPNOTSUPP, "fallocate: guest_memfd needs FALLOC_FL_KEEP_SIZE")
        if mode & ~(L.FALLOC_FL_KEEP_SIZE | L.FALLOC_FL_PUNCH_HOLE):
            raise kerr(errno.EOPNOTSUPP, f"fallocate: guest_memfd does not support mode {mode:#x}")
        if offset & (PAGE - 1) or length & (PAGE - 1):
            raise kerr(errno.EINVAL, "fallocate: guest_memfd offset/length not page aligned")
        if mode & L.FALLOC_FL_PUNCH_HOLE:
            self.punch_hole(offset, offset + length)
            return
        if offset + length > self.i_size:
            raise kerr(errno.EINVAL, "fallocate: guest_memfd range past its size")
        self.invalidate_lock.down_read()
        try:
            self._populate(offset, offset + length)
        finally:
            self.invalidate_lock.up_read()

    def _populate(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """kvm_gmem_get_folio for ``[start, end)``: allocate its holes; invalidate_lock held
        (either mode) so that no punch hole truncates meanwhile."""
        lockdep_assert_held(self.invalidate_lock, "kvm_gmem_get_folio")
        return self.cache.populate(start, end)

    def punch_hole(self, start: int, end: int) -> None:
        """kvm_gmem_punch_hole: invalidate, truncate, end the invalidation, all under
        invalidate_lock held for write."""
        end = min(end, self.i_size)
        kvm = self.kvm
        self.invalidate_lock.down_write()
        try:
            kvm.sched.emit("gmem", "punch_hole", file=self.name, start=start, end=end)
            self.invalidate_begin(start, end)
            # Cheap scheduling point between zap and free: where a racing vCPU could slip in.
            kvm.sched.point(f"{self.name}.pages", "w")
            self.cache.truncate_range(start, end)
            self.invalidate_end(start, end)
        finally:
            self.invalidate_lock.up_write()

    def invalidate_begin(self, start: int, end: int) -> None:
        """__kvm_gmem_invalidate_begin: zap the SPTEs of every bound slot in the range."""
        lockdep_assert_held_write(self.invalidate_lock, "kvm_gmem_invalidate_begin")
        for bs, be, b in list(self.bindings.overlapping(start, end)):
            self.kvm.mmu.invalidate_begin(b.slot.gpa_of(b, bs), b.slot.gpa_of(b, be))

    def invalidate_end(self, start: int, end: int) -> None:
        """__kvm_gmem_invalidate_end."""
        lockdep_assert_held_write(self.invalidate_lock, "kvm_gmem_invalidate_end")
        for _ in list(self.bindings.overlapping(start, end)):
            self.kvm.mmu.invalidate_end()

    def get_pfn(self, offset: int) -> int:
        """kvm_gmem_get_pfn: the page at ``offset``, allocated on first use."""
        self.invalidate_lock.down_read()
        try:
            (s, _, phys), = self._populate(offset, offset + PAGE)
            return phys + (offset - s)
        finally:
            self.invalidate_lock.up_read()

    def bind(self, slot: Memslot, offset: int) -> None:
        """kvm_gmem_bind: checks in the kernel's order."""
        if self.kvm is not slot.kvm:
            raise kerr(errno.EINVAL, "KVM_SET_USER_MEMORY_REGION2: guest_memfd of another VM")
        size = slot.npages * PAGE
        if offset < 0 or offset & (PAGE - 1) or offset + size > self.i_size:
            raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION2: guest_memfd range "
                       f"[{offset:#x}, {offset + size:#x}) not page aligned or past "
                       f"{self.i_size:#x}")
        self.invalidate_lock.down_write()
        try:
            hits = self.bindings.overlapping(offset, offset + size)
            hit = hits[0] if hits else None
            if hit is not None:
                raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION2: guest_memfd range "
                           f"[{offset:#x}, {offset + size:#x}) already bound to slot "
                           f"{hit[2].slot.id}")
            # The slot is not published yet: the fault path will see the file.
            slot.gmem_offset = offset
            slot.set_gmem(self)
            self._set_binding(offset, offset + size, slot)
        finally:
            self.invalidate_lock.up_write()

    def _set_binding(self, start: int, end: int, slot: Memslot | None) -> None:
        """xa_store_range / xa_erase on ``bindings``: invalidate_lock held for write."""
        lockdep_assert_held_write(self.invalidate_lock, "kvm_gmem_bind/unbind")
        if slot is None:
            self.bindings.remove(start, end)
        else:
            self.bindings.set(start, end, Binding(slot, start, end))

    def unbind(self, slot: Memslot) -> None:
        """kvm_gmem_unbind (a memslot is freed: under slots_lock, or by the VM's last user):
        drop the binding under invalidate_lock; synchronize_srcu already kept
        kvm_gmem_get_pfn away from the slot."""
        self.invalidate_lock.down_write()
        try:
            self._set_binding(slot.gmem_offset, slot.gmem_offset + slot.npages * PAGE, None)
            slot.set_gmem(None)
        finally:
            self.invalidate_lock.up_write()

    def release(self) -> None:
        """kvm_gmem_release: under slots_lock and invalidate_lock, clear every bound slot's
        file, invalidate all its ranges, then drop the pages and the VM reference."""
        kvm = self.kvm
        with kvm.slots_lock:
            self.invalidate_lock.down_write()
            try:
                for _, _, b in list(self.bindings):
                    b.slot.set_gmem(None)
                self.invalidate_begin(0, self.i_size)
                self.invalidate_end(0, self.i_size)
                kvm.gmem_files.remove(self)
            finally:
                self.invalidate_lock.up_write()
        self.bindings.clear()
        self.cache.truncate_range(0, self.i_size)
        kvm.put()


def kvm_gmem_supported_flags(kvm: Kvm | None) -> int:
    """kvm_gmem_get_supported_flags: MMAP when the profile has it; INIT_SHARED only for VMs
    without private memory (and on the system fd)."""
    if kvm is None:
        prof_mmap = True
    else:
        prof_mmap = kvm.kernel.profile.kvm_gmem_mmap
    if not prof_mmap:
        return 0
    flags = K.GUEST_MEMFD_FLAG_MMAP
    if kvm is None or not kvm.has_private_mem:
        flags |= K.GUEST_MEMFD_FLAG_INIT_SHARED
    return flags


def kvm_gmem_create(kvm: Kvm, size: int, flags: int) -> GmemFile:
    supported = kvm_gmem_supported_flags(kvm)
    if flags & ~supported:
        raise kerr(errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD: flags {flags:#x} outside {supported:#x}")
    if size <= 0 or size & (PAGE - 1) or size >= 1 << 63:
        raise kerr(errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD: size {size:#x} zero or not page aligned")
    return GmemFile(kvm, size, flags)
