"""/dev/udmabuf: a dma-buf made from ranges of sealed memfds (drivers/dma-buf/udmabuf.c,
since 6.11 pinning through memfd_pin_folios in mm/gup.c).

The supported way to give a device memory that userspace also maps *and* pins: the pages
belong to the memfd (shmem or hugetlbfs), udmabuf takes a long-term pin on each, so they stay
put while the buffer lives; the dma-buf's own mapping is VM_PFNMAP (special PTEs), like the
heaps'. Memory model PINNED; no pin/unpin ops (a static exporter).

udmabuf_create, read from the kernel source (KERNEL.md §1 "udmabuf"), in this order:
1. for every item: offset and size page aligned, else EINVAL; the running page count above
   ``size_limit_mb`` (module parameter, default 64) EINVAL; a total of 0 pages EINVAL;
2. for every item, in turn: fget(memfd) fails EBADFD (EBADFD, 77 — not EBADF); not a shmem or
   hugetlbfs file EBADFD; then, under the inode lock, the seals: F_SEAL_SHRINK required and
   F_SEAL_WRITE/F_SEAL_FUTURE_WRITE denied, else EINVAL; then memfd_pin_folios(): an empty
   item (size 0 inside a non-empty list), a negative offset, or a range past the file's last
   page EINVAL (shmem_get_folio refuses to allocate past i_size); holes are allocated first;
3. dma_buf_export (flags O_RDWR) and dma_buf_fd, O_CLOEXEC when UDMABUF_FLAGS_CLOEXEC is set;
   other flag bits are ignored. Any failure unpins what the earlier items pinned.
UDMABUF_CREATE_LIST: ``count`` above ``list_limit`` (module parameter, default 1024) EINVAL
before the items are read; the items are copied in (EFAULT). Other ioctls ENOTTY.

The buffer (struct udmabuf): the pinned pages, in buffer order; ``sg`` is the table that
begin_cpu_access builds (end_cpu_access without it is EINVAL); mmap needs MAP_SHARED (EINVAL)
and sets VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP, its fault inserting the whole VMA's pfns at once;
vmap maps every page. Release unpins. The memfd is *not* held: udmabuf_create fput()s it once
its folios are pinned — closing the memfd leaves the pages alive (orphans in hw) until the
udmabuf goes, and punching a hole in the memfd afterwards gives the memfd a new page while
the udmabuf keeps the old one (udmabuf's known coherency caveat).

Pins block F_SEAL_WRITE on the memfd (memfd_wait_for_pins: EBUSY) while the buffer lives.

Accesses (sim/track.py): the buffer's pages (``udmabuf.pages``) are written while it is built
and at release, read in between; its own location (``udmabuf``) holds the sg table pointer,
which begin_cpu_udmabuf fills in with no lock at all (two concurrent DMA_BUF_IOCTL_SYNC calls
race on it in the kernel too: plain, so the model reports that race), and the vmap count,
under the resv lock (vmap_udmabuf asserts it): plain.

Model deviations (docs/fidelity.md): the fault handler's prefault of the whole VMA happens at
mmap time (mm/vma.py raises SIGBUS on a VM_PFNMAP hole without asking vm_ops->fault); a
range past the file fails before the holes inside it are allocated (the kernel allocates
them, then fails: invisible through the uAPI); MFD_HUGETLB memfds are shmem in this model.
Leaves out: migration of the folios out of ZONE_MOVABLE/CMA before pinning
(check_and_migrate_movable_folios), the sg table's per-page entries, the DMA mask.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...sim import track
from ...uapi import linux as L
from ...uapi import udmabuf as U
from ..fs.file import File
from ..mm.gup import Pin
from ..mm.memfd import MemfdFile
from ..mm.vma import VM_DONTDUMP, VM_DONTEXPAND, VM_MAYSHARE, VM_PFNMAP, VM_SHARED, page_up
from . import core
from .core import PINNED, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping
from .heaps import vmap_address

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

PAGE = L.PAGE_SIZE
list_limit = 1024  # module_param: udmabuf_create_list->count limit
size_limit_mb = 64  # module_param: max size of a dmabuf, in megabytes
SEALS_WANTED = L.F_SEAL_SHRINK
SEALS_DENIED = L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE
LOFF_MAX = (1 << 63) - 1


_SG = (0, 1)
_VMAP = (1, 2)


class Udmabuf(DmaBufOps, track.Tracked):
    """struct udmabuf plus udmabuf_ops. ``pages`` maps buffer offsets to physical addresses
    (linear extents, so physically contiguous neighbours merge); ``pins`` are the long-term
    pins memfd_pin_folios took, one per item."""

    memory_model = PINNED
    exp_name = "udmabuf"

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.pagecount = 0
        self.pages: RangeMap[int] = RangeMap(linear=True, label="udmabuf.pages")
        self.pins: list[Pin] = []
        self.sg = False
        self.vmap_cnt = 0
        self.track_init("udmabuf")

    @property
    def size(self) -> int:
        return self.pagecount * PAGE

    # ----- building (udmabuf_pin_folios) ---------------------------------------------------
    def pin_folios(self, memfd: MemfdFile, start: int, size: int) -> None:
        """udmabuf_pin_folios: memfd_pin_folios() the range and append its pages."""
        pin = memfd_pin_folios(memfd, start, start + size - 1)
        self.pins.append(pin)
        pos = self.size
        for p, q in pin.extents:
            self.pages.set(pos, pos + (q - p), p)
            pos += q - p
        self.pagecount += size // PAGE

    def unpin_all(self) -> None:
        """unpin_all_folios."""
        for pin in self.pins:
            pin.unpin()
        self.pins.clear()

    # ----- dma_buf_ops ---------------------------------------------------------------------
    def map_dma_buf(self, attach: DmaBufAttachment, direction: int) -> DmaMapping:
        """get_sg_table + dma_map_sgtable on dma-direct: DMA address = physical address, one
        range per physically contiguous run."""
        if self.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "map_udmabuf: sg table allocation failed (injected)")
        return DmaMapping([(p, e - s, p) for s, e, p in self.pages])

    def unmap_dma_buf(self, attach: DmaBufAttachment, mapping: DmaMapping, d: int) -> None:
        pass

    def mmap(self, buf: DmaBuf, vma: Vma) -> None:
        """mmap_udmabuf: MAP_SHARED only; a VM_PFNMAP VMA."""
        if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) == 0:
            raise kerr(errno.EINVAL, "mmap: udmabuf needs MAP_SHARED")
        vma.vm_flags |= VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        # udmabuf_vm_fault's prefault: every page of the VMA at once (see the module).
        start = vma.pgoff
        for s, e, p in self.pages.overlapping(start, start + (vma.end - vma.start)):
            vma.ptes.set(vma.start + (s - start), vma.start + (e - start), p)

    def fault(self, buf: DmaBuf, vma: Vma, start: int, end: int,
              write: bool) -> list[tuple[int, int, int]]:
        """udmabuf_vm_fault: vmf_insert_pfn; SIGBUS at pgoff >= pagecount."""
        if end > self.size:
            addr = vma.start + (max(start, self.size) - vma.pgoff)
            raise Fault(addr, "SIGBUS", "udmabuf fault past the buffer (pgoff >= pagecount)")
        return [(s, e, p) for s, e, p in self.pages.overlapping(start, end)]

    def vmap(self, buf: DmaBuf) -> int:
        """vmap_udmabuf: vmap_pfn of every page (EINVAL if it fails)."""
        if self.kernel.sched.fault("vmap"):
            raise kerr(errno.EINVAL, "vmap_udmabuf: vmap_pfn failed (injected)")
        track.write(self, *_VMAP)  # resv held (dma_buf_vmap)
        self.vmap_cnt += 1
        return vmap_address(self.kernel)

    def vunmap(self, buf: DmaBuf) -> None:
        track.write(self, *_VMAP)
        self.vmap_cnt -= 1

    def begin_cpu_access(self, buf: DmaBuf, direction: int) -> None:
        """begin_cpu_udmabuf: build the sg table on first use, else sync it for the CPU.
        No lock: ubuf->sg is read and set plain."""
        track.read(self, *_SG)
        if not self.sg:
            if self.kernel.sched.fault("kzalloc"):
                raise kerr(errno.ENOMEM, "begin_cpu_udmabuf: sg table allocation failed "
                           "(injected)")
            track.write(self, *_SG)
            self.sg = True

    def end_cpu_access(self, buf: DmaBuf, direction: int) -> None:
        """end_cpu_udmabuf: EINVAL without a table (no DMA_BUF_SYNC_START came first)."""
        track.read(self, *_SG)
        if not self.sg:
            raise kerr(errno.EINVAL, "end_cpu_udmabuf: no sg table (sync END before START)")

    def release(self, buf: DmaBuf) -> None:
        """release_udmabuf: put the sg table, unpin every folio."""
        track.write(self, *_SG)
        self.sg = False
        self.unpin_all()
        self.pages.clear()


def memfd_pin_folios(memfd: MemfdFile, start: int, end: int) -> Pin:
    """memfd_pin_folios (mm/gup.c) for shmem: ``[start, end]`` inclusive; the folios found in
    the page cache, or allocated (memfd_alloc_folio -> shmem_read_folio), each pinned."""
    if start < 0 or start > end:
        raise kerr(errno.EINVAL, f"memfd_pin_folios: empty or negative range [{start:#x}, "
                   f"{end:#x}]")
    last = end + 1
    if last > page_up(memfd.i_size):
        raise kerr(errno.EINVAL, f"memfd_pin_folios: [{start:#x}, {last:#x}) reaches past the "
                   f"last page of {memfd.name} (i_size {memfd.i_size:#x}; shmem_get_folio "
                   "refuses to allocate past EOF)")
    pieces = memfd.cache.populate(start, last)
    extents: list[tuple[int, int]] = []
    for s, e, p in pieces:
        cs, ce = max(s, start), min(e, last)
        q = p + (cs - s)
        if extents and extents[-1][1] == q:
            extents[-1] = (extents[-1][0], q + (ce - cs))
        else:
            extents.append((q, q + (ce - cs)))
    return Pin(memfd.kernel, extents, f"memfd_pin_folios {memfd.name} [{start:#x}, {last:#x})")


def check_memfd_seals(memfd: File) -> MemfdFile:
    """check_memfd_seals: shmem (or hugetlbfs) with SHRINK and without WRITE/FUTURE_WRITE."""
    if not isinstance(memfd, MemfdFile):
        raise kerr(errno.EBADFD, f"udmabuf: {memfd.name} is a {memfd.kind}, not a shmem or "
                   "hugetlbfs file")
    seals = memfd.seals
    if (seals & SEALS_WANTED) != SEALS_WANTED or seals & SEALS_DENIED:
        raise kerr(errno.EINVAL, f"udmabuf: {memfd.name} seals {seals:#x} need F_SEAL_SHRINK "
                   "and neither F_SEAL_WRITE nor F_SEAL_FUTURE_WRITE")
    return memfd


def udmabuf_create(proc: Process, flags: int,
                   items: list[tuple[int, int, int]]) -> int:
    """udmabuf_create for (memfd, offset, size) items; returns the new dma-buf fd."""
    kernel = proc.kernel
    sched = kernel.sched
    if sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "udmabuf_create: kzalloc failed (injected)")
    pglimit = (size_limit_mb * 1024 * 1024) >> L.PAGE_SHIFT
    pgcnt = 0
    for i, (_, offset, size) in enumerate(items):
        if offset & (PAGE - 1):
            raise kerr(errno.EINVAL, f"udmabuf: item {i}: offset {offset:#x} not page aligned")
        if size & (PAGE - 1):
            raise kerr(errno.EINVAL, f"udmabuf: item {i}: size {size:#x} not page aligned")
        pgcnt += size >> L.PAGE_SHIFT
        if pgcnt > pglimit:
            raise kerr(errno.EINVAL, f"udmabuf: {pgcnt} pages exceed size_limit_mb "
                       f"({size_limit_mb} MiB)")
    if not pgcnt:
        raise kerr(errno.EINVAL, "udmabuf: size 0 (no pages)")
    if sched.fault("kvmalloc"):
        raise kerr(errno.ENOMEM, "udmabuf_create: kvmalloc of the page arrays failed "
                   "(injected)")
    ubuf = Udmabuf(kernel)
    try:
        for i, (fd, offset, size) in enumerate(items):
            f = proc.fds.get(fd)
            if f is None:
                raise kerr(errno.EBADFD, f"udmabuf: item {i}: fd {fd} is not open (fget)")
            # inode_lock_shared against a concurrent memfd_add_seals
            sched.point(f"{f.name}.i_rwsem", "r")
            memfd = check_memfd_seals(f)
            loff = offset - (1 << 64) if offset > LOFF_MAX else offset
            ubuf.pin_folios(memfd, loff, size)
        buf = core.dma_buf_export(kernel, ubuf, ubuf.size, priv=ubuf, flags=L.O_RDWR)
    except OSError:
        ubuf.unpin_all()
        raise
    sched.emit("udmabuf", "create", buf=buf.name, items=len(items), size=ubuf.size)
    cloexec = L.O_CLOEXEC if flags & U.UDMABUF_FLAGS_CLOEXEC else 0
    return core.dma_buf_fd(proc, buf, cloexec)  # EMFILE: the put releases (unpins) it


class UdmabufDevFile(File):
    """An open /dev/udmabuf (udmabuf_fops: unlocked_ioctl only)."""

    kind = "udmabuf-dev"

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        if cmd == U.UDMABUF_CREATE:
            c = arg.copy_from_user(U.udmabuf_create)
            return udmabuf_create(proc, c.flags, [(c.memfd, c.offset, c.size)])
        if cmd == U.UDMABUF_CREATE_LIST:
            head = arg.copy_from_user(U.udmabuf_create_list)
            if head.count > list_limit:
                raise kerr(errno.EINVAL, f"UDMABUF_CREATE_LIST: count {head.count} > "
                           f"list_limit {list_limit}")
            item = ctypes.sizeof(U.udmabuf_create_item)
            raw = arg.read(item * head.count, ctypes.sizeof(U.udmabuf_create_list))
            items = [U.udmabuf_create_item.from_buffer_copy(raw, i * item)
                     for i in range(head.count)]
            return udmabuf_create(proc, head.flags,
                                  [(it.memfd, it.offset, it.size) for it in items])
        raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: not a udmabuf ioctl")


def udmabuf_init(kernel: Kernel) -> None:
    """udmabuf_dev_init: misc_register /dev/udmabuf."""
    kernel.register_device("/dev/udmabuf",
                           lambda proc, flags: UdmabufDevFile(kernel, flags, "/dev/udmabuf"))
