"""memfd and its seals (mm/memfd.c), on a shmem inode (mm/shmem.c).

A MemfdFile is a regular shmem file: i_size, a page cache of extents, the seals, and
i_mmap_writable (the number of shared mappings that may write: VM_SHARED with VM_MAYWRITE),
which F_SEAL_WRITE requires to be zero. Seals, as in memfd_add_seals and the shmem paths
that enforce them:

- F_SEAL_SEAL: no further seals (EPERM);
- F_SEAL_SHRINK / F_SEAL_GROW: ftruncate down / up, write or fallocate past i_size (EPERM);
- F_SEAL_WRITE: write, punch hole, new writable shared mmap (EPERM); adding it needs no
  writable shared mapping (EBUSY) and no pinned page (memfd_wait_for_pins, EBUSY);
- F_SEAL_FUTURE_WRITE: like WRITE for new writers, existing mappings stay writable;
- F_SEAL_EXEC: the mode's exec bits are frozen.

Without MFD_ALLOW_SEALING (or MFD_NOEXEC_SEAL) the file starts with F_SEAL_SEAL.

Invariants: seals only ever grow; ``i_mmap_writable`` counts exactly the VMAs that map the
file VM_SHARED with VM_MAYWRITE (vma.py keeps it). Units: bytes (``i_size``, offsets, lengths);
``seals`` is a bitmask of F_SEAL_*.

Locking (which lock protects which field; the fields are ranges of the file's tracked
location):
- ``i_size`` and ``seals``: written under the inode lock (``inode_lock``, i_rwsem, held for
  write by shmem's write_iter, do_truncate → shmem_setattr, shmem_fallocate and
  memfd_add_seals) and read under it there; faults, reads and the size seen by others use
  i_size_read (a marked read). F_GET_SEALS (memfd_get_seals) reads the seals without a lock,
  plain, as the kernel does. shmem_mmap's seal check (memfd_check_seals_mmap) reads them
  without the inode lock too; mapping_deny_writable's atomic protocol is what orders it
  against F_SEAL_WRITE, so that read is marked.
- ``i_mmap_writable`` is an atomic_t (mapping_map_writable / mapping_deny_writable): marked.
- ``exec_bits``: set by memfd_create before the file is visible; read under the inode lock.
- ``inode_lock``, ``cache``: set at creation, never rebound; the page cache's own fields:
  filemap.py. ``f_pos`` (f_pos_lock) is not tracked.
Leaves out: hugetlbfs (MFD_HUGETLB is accepted and behaves as shmem here), swap, xattrs.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...sim import track
from ...sim.locks import RwSem
from ...uapi import linux as L
from ..fs.file import FMODE_WRITE, File
from ..lockdep_assert import lockdep_assert_held_write
from .filemap import PageCache
from .mm import VM_MAYWRITE, VM_SHARED, VM_WRITE, page_down, page_up

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from .vma import Vma

MFD_ALL_FLAGS = L.MFD_CLOEXEC | L.MFD_ALLOW_SEALING | L.MFD_HUGETLB | L.MFD_NOEXEC_SEAL | L.MFD_EXEC
MFD_HUGE_SHIFT = 26
MFD_HUGE_MASK = 0x3F
MAX_LFS_FILESIZE = (1 << 63) - 1
# Fields of a file's tracked location (sim/track.py ranges).
I_SIZE = (0, 1)
SEALS = (1, 2)
I_MMAP_WRITABLE = (2, 3)  # also counted by vma.py when a shared writable mapping comes or goes


class MemfdFile(File):
    kind = "memfd"
    regular = True
    fmode_pread = True
    noexec = False

    def __init__(self, kernel: Kernel, name: str, flags: int, size: int = 0) -> None:
        super().__init__(kernel, flags, f"memfd:{name}")
        self.cache = PageCache(kernel, self.name)
        self.i_size = size
        self.seals = L.F_SEAL_SEAL
        self.i_mmap_writable = 0
        self.exec_bits = True
        self.inode_lock = RwSem(kernel.sched, f"{self.name}.i_rwsem", "&sb->s_type->i_mutex_key")

    def i_size_read(self) -> int:
        track.read_once(self, *I_SIZE)
        return self.i_size

    def get_seals(self) -> int:
        """memfd_get_seals: a plain read, no lock (as in the kernel)."""
        track.read(self, *SEALS)
        return self.seals

    def _locked(self, what: str) -> None:
        """The inode lock is held for write by the running task (what asserts it)."""
        lockdep_assert_held_write(self.inode_lock, what)
        track.read(self, *SEALS)
        track.read(self, *I_SIZE)

    def _set_size(self, size: int) -> None:
        track.write(self, *I_SIZE)
        self.i_size = size

    # ----- file operations -------------------------------------------------------------
    def size(self) -> int:
        return self.i_size_read()

    def read(self, proc: Process, n: int, pos: int | None) -> bytes:
        off = self.f_pos if pos is None else pos
        n = max(0, min(n, self.i_size_read() - off))
        data = self.cache.read(off, n) if n else b""
        if pos is None:
            self.f_pos += len(data)
        return data

    def write(self, proc: Process, data: bytes, pos: int | None) -> int:
        self.inode_lock.down_write()
        try:
            return self._write(data, pos)
        finally:
            self.inode_lock.up_write()

    def _write(self, data: bytes, pos: int | None) -> int:
        """shmem_file_write_iter, inode lock held."""
        self._locked("shmem_file_write_iter")
        off = self.f_pos if pos is None else pos
        if self.seals & (L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE):
            raise kerr(errno.EPERM, "write: memfd is sealed with F_SEAL_WRITE/FUTURE_WRITE")
        end = off + len(data)
        if end > self.i_size and self.seals & L.F_SEAL_GROW:
            raise kerr(errno.EPERM, "write: past i_size on a memfd sealed with F_SEAL_GROW")
        if data:
            self.cache.write(off, data, page_down(off), page_up(end))
            if end > self.i_size:
                self._set_size(end)
        if pos is None:
            self.f_pos = end
        return len(data)

    def truncate(self, length: int) -> None:
        self.inode_lock.down_write()  # do_truncate
        try:
            self._truncate(length)
        finally:
            self.inode_lock.up_write()

    def _truncate(self, length: int) -> None:
        self._locked("shmem_setattr")
        if length < self.i_size and self.seals & L.F_SEAL_SHRINK:
            raise kerr(errno.EPERM, "ftruncate: shrinking a memfd sealed with F_SEAL_SHRINK")
        if length > self.i_size and self.seals & L.F_SEAL_GROW:
            raise kerr(errno.EPERM, "ftruncate: growing a memfd sealed with F_SEAL_GROW")
        if length < self.i_size:
            self.cache.truncate_range(page_up(length), page_up(self.i_size))
            if length & (L.PAGE_SIZE - 1):
                self.cache.zero(length, page_up(length) - length)
        self._set_size(length)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        self.inode_lock.down_write()
        try:
            self._fallocate(mode, offset, length)
        finally:
            self.inode_lock.up_write()

    def _fallocate(self, mode: int, offset: int, length: int) -> None:
        self._locked("shmem_fallocate")
        if mode & ~(L.FALLOC_FL_KEEP_SIZE | L.FALLOC_FL_PUNCH_HOLE):
            raise kerr(errno.EOPNOTSUPP, f"fallocate: shmem does not support mode {mode:#x}")
        end = offset + length
        if mode & L.FALLOC_FL_PUNCH_HOLE:
            if self.seals & (L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE):
                raise kerr(errno.EPERM, "fallocate: punching a hole in a write-sealed memfd")
            whole_s, whole_e = page_up(offset), page_down(end)
            if whole_s < whole_e:
                self.cache.truncate_range(whole_s, whole_e)
            # Partial pages at the edges are zeroed in place (shmem_truncate_range).
            if offset < whole_s:
                self.cache.zero(offset, min(whole_s, end) - offset)
            if whole_e < end and whole_e >= whole_s:
                self.cache.zero(whole_e, end - whole_e)
            return
        if self.seals & L.F_SEAL_GROW and end > self.i_size:
            raise kerr(errno.EPERM, "fallocate: past i_size on a memfd sealed with F_SEAL_GROW")
        self.cache.populate(page_down(offset), page_up(end))
        if not mode & L.FALLOC_FL_KEEP_SIZE and end > self.i_size:
            self._set_size(end)

    def mmap(self, proc: Process, vma: Vma) -> None:
        track.read_once(self, *SEALS)  # memfd_check_seals_mmap: no inode lock (see above)
        if self.seals & (L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE) and vma.vm_flags & VM_SHARED:
            if vma.vm_flags & VM_WRITE:
                raise kerr(errno.EPERM, "mmap: MAP_SHARED|PROT_WRITE of a write-sealed memfd")
            vma.vm_flags &= ~VM_MAYWRITE  # seal_check_write: never writable later either

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        limit = page_up(self.i_size_read())
        if start >= limit:
            raise Fault(vma.start + (start - vma.pgoff), "SIGBUS", "shmem fault past i_size")
        if end > limit:
            raise Fault(vma.start + (limit - vma.pgoff), "SIGBUS", "shmem fault past i_size")
        return self.cache.populate(start, end)

    def release(self) -> None:
        self.cache.truncate_range(0, max(page_up(self.i_size), self._extent_end()))

    def _extent_end(self) -> int:
        last = 0
        for _, e, _ in self.cache.pages:
            last = e
        return last

    # ----- seals (memfd_fcntl) -----------------------------------------------------------
    def fcntl_seals(self) -> MemfdFile:
        return self

    def add_seals(self, seals: int) -> None:
        """memfd_add_seals: under the inode lock."""
        self.inode_lock.down_write()
        try:
            self._add_seals(seals)
        finally:
            self.inode_lock.up_write()

    def _add_seals(self, seals: int) -> None:
        self._locked("memfd_add_seals")
        if not self.f_mode & FMODE_WRITE:
            raise kerr(errno.EPERM, "F_ADD_SEALS: file not open for writing")
        if seals & ~L.F_ALL_SEALS:
            raise kerr(errno.EINVAL, f"F_ADD_SEALS: unknown seal bits {seals & ~L.F_ALL_SEALS:#x}")
        if self.seals & L.F_SEAL_SEAL:
            raise kerr(errno.EPERM, "F_ADD_SEALS: memfd is sealed with F_SEAL_SEAL")
        track.read_once(self, *I_MMAP_WRITABLE)  # mapping_deny_writable: an atomic_t
        if seals & L.F_SEAL_WRITE and not self.seals & L.F_SEAL_WRITE:
            if self.i_mmap_writable > 0:
                raise kerr(errno.EBUSY, "F_ADD_SEALS: F_SEAL_WRITE while a writable shared "
                           "mapping exists (mapping_deny_writable)")
            if self.cache.has_pins():
                raise kerr(errno.EBUSY, "F_ADD_SEALS: F_SEAL_WRITE while pages are pinned "
                           "(memfd_wait_for_pins)")
        if seals & L.F_SEAL_EXEC and self.exec_bits:
            seals |= L.F_SEAL_SHRINK | L.F_SEAL_GROW | L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE
            if self.i_mmap_writable > 0:
                raise kerr(errno.EBUSY, "F_ADD_SEALS: F_SEAL_EXEC implies WRITE with writers")
        track.write(self, *SEALS)
        self.seals |= seals
        self.kernel.sched.emit("memfd", "add_seals", file=self.name, seals=self.seals)


def memfd_create(kernel: Kernel, name: str, flags: int) -> MemfdFile:
    if not flags & L.MFD_HUGETLB:
        if flags & ~MFD_ALL_FLAGS:
            raise kerr(errno.EINVAL, f"memfd_create: unknown flags {flags & ~MFD_ALL_FLAGS:#x}")
    elif flags & ~(MFD_ALL_FLAGS | (MFD_HUGE_MASK << MFD_HUGE_SHIFT)):
        raise kerr(errno.EINVAL, f"memfd_create: unknown flags {flags:#x}")
    if flags & L.MFD_EXEC and flags & L.MFD_NOEXEC_SEAL:
        raise kerr(errno.EINVAL, "memfd_create: MFD_EXEC with MFD_NOEXEC_SEAL")
    # What reaches the kernel is the C string os.fsencode makes (UTF-8, surrogateescape),
    # up to its first NUL; a name with no such bytes (a lone surrogate outside
    # U+DC80..U+DCFF) never makes a syscall: both hosts refuse it as an invalid name.
    try:
        raw = name.encode("utf-8", "surrogateescape").split(b"\0", 1)[0]
    except UnicodeEncodeError:
        raise kerr(errno.EINVAL, f"memfd_create: name {name!r} has no byte encoding") from None
    if len(raw) > L.MFD_NAME_MAX:
        raise kerr(errno.EINVAL, f"memfd_create: name longer than {L.MFD_NAME_MAX} bytes")
    f = MemfdFile(kernel, name, L.O_RDWR | L.O_LARGEFILE)
    if flags & L.MFD_NOEXEC_SEAL:
        f.exec_bits = False
        f.seals = L.F_SEAL_EXEC
    if flags & L.MFD_ALLOW_SEALING:
        f.seals &= ~L.F_SEAL_SEAL
    return f
