"""/dev/udmabuf: a dma-buf made from ranges of sealed memfds (drivers/dma-buf/udmabuf.c,
since 6.11 pinning through memfd_pin_folios in mm/gup.c).

The supported way to give a device memory that userspace also maps *and* pins: the pages
belong to the memfd (shmem or hugetlbfs), udmabuf takes a long-term pin on each, so they stay
put while the buffer lives; the dma-buf's own mapping is VM_PFNMAP (special PTEs), like the
heaps'. Memory model PINNED; no pin/unpin ops (a static exporter).

udmabuf_create, read from the kernel source (KERNEL.md §1 "udmabuf"), in this order:
1. for every item: offset and size page aligned, else EINVAL; the running page count above
   ``size_limit_mb`` (module parameter; the profile's default, 64 before 7.x, INT_MAX on
   7.3 as observed) EINVAL; a total of 0 pages EINVAL;
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

The ops are the static :data:`UDMABUF_OPS` (udmabuf_ops); the buffer is the :class:`Udmabuf`
in ``dmabuf.priv``. /dev/udmabuf's ioctls are the table :data:`UDMABUF_IOCTLS`.

Invariants: ``pages`` covers ``[0, size)`` from export until release and every page in it is
held by one of ``pins``; a failed create leaves nothing pinned; the memfd's file reference is
dropped once its range is pinned.
Units: bytes (offsets, sizes); ``pagecount`` in pages; ``pages`` maps buffer offsets to
physical byte addresses.

Which lock protects which field (sim/track.py):
- ``pages`` (``udmabuf.pages``), ``pins``, ``pagecount``: written while the buffer is built
  (before export) and at release, read in between: plain, no lock;
- ``sg`` (location ``udmabuf``, first part): no lock at all — begin_cpu_udmabuf fills it in
  plain, and two concurrent DMA_BUF_IOCTL_SYNC calls race on it in the kernel too, so the
  model reports that race;
- ``vmap_cnt`` (location ``udmabuf``, second part): the resv lock — the vmap/vunmap ops run
  under dma_buf_vmap/vunmap's assertion; plain.

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
from typing import TYPE_CHECKING, NamedTuple

from ...errors import kerr
from ...extents import Extent, RangeMap
from ...sim import track
from ...uapi import linux as L
from ...uapi import udmabuf as U
from ..fs.file import File, fput
from ..fs.ioctl_table import IoctlTable
from ..init import initcall
from ..mm.gup import Pin
from ..mm.memfd import MemfdFile
from ..mm.mm import VM_DONTDUMP, VM_DONTEXPAND, VM_PFNMAP
from . import core
from .core import (
    PINNED,
    DmaBuf,
    DmaBufAttachment,
    DmaBufOps,
    DmaMapping,
    dma_direct,
    mmap_needs_shared,
    sigbus_past_the_end,
)

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

PAGE = L.PAGE_SIZE
list_limit = 1024  # module_param: udmabuf_create_list->count limit
# module_param size_limit_mb (the max size of a dmabuf, MiB): None takes the profile's default
# (64 on older kernels, INT_MAX on 7.3); a test sets it as `modprobe udmabuf size_limit_mb=`.
size_limit_mb: int | None = None
SEALS_WANTED = L.F_SEAL_SHRINK
SEALS_DENIED = L.F_SEAL_WRITE | L.F_SEAL_FUTURE_WRITE
LOFF_MAX = (1 << 63) - 1


_SG = (0, 1)
_VMAP = (1, 2)


class Udmabuf(track.Tracked):
    """struct udmabuf, the export's private data (``dmabuf.priv``). ``pages`` maps buffer
    offsets to physical addresses (linear extents, so physically contiguous neighbours
    merge); ``pins`` are the long-term pins memfd_pin_folios took, one per item."""

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


# ----- udmabuf_ops ---------------------------------------------------------------------------
def map_udmabuf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    """get_sg_table + dma_map_sgtable on dma-direct: DMA address = physical address, one
    range per physically contiguous run."""
    ubuf: Udmabuf = attach.dmabuf.priv
    if ubuf.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "map_udmabuf: sg table allocation failed (injected)")
    return dma_direct((p, p + (e - s)) for s, e, p in ubuf.pages)


def unmap_udmabuf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    pass


def mmap_udmabuf(buf: DmaBuf, vma: Vma) -> None:
    """mmap_udmabuf: MAP_SHARED only; a VM_PFNMAP VMA."""
    mmap_needs_shared(vma, "udmabuf")
    vma.vm_flags |= VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
    # udmabuf_vm_fault's prefault: every page of the VMA at once (see the module).
    start = vma.pgoff
    for s, e, p in buf.priv.pages.overlapping(start, start + (vma.end - vma.start)):
        vma.ptes.set(vma.start + (s - start), vma.start + (e - start), p)


def udmabuf_vm_fault(buf: DmaBuf, vma: Vma, start: int, end: int,
                     write: bool) -> list[Extent[int]]:
    """udmabuf_vm_fault: vmf_insert_pfn; SIGBUS at pgoff >= pagecount."""
    ubuf: Udmabuf = buf.priv
    sigbus_past_the_end(vma, start, end, ubuf.size, "udmabuf")
    return ubuf.pages.overlapping(start, end)


def vmap_udmabuf(buf: DmaBuf) -> int:
    """vmap_udmabuf: vmap_pfn of every page (EINVAL if it fails)."""
    ubuf: Udmabuf = buf.priv
    if ubuf.kernel.sched.fault("vmap"):
        raise kerr(errno.EINVAL, "vmap_udmabuf: vmap_pfn failed (injected)")
    track.write(ubuf, *_VMAP)  # resv held (dma_buf_vmap asserted it)
    ubuf.vmap_cnt += 1
    return core.vmap_address(ubuf.kernel)


def vunmap_udmabuf(buf: DmaBuf) -> None:
    ubuf: Udmabuf = buf.priv
    track.write(ubuf, *_VMAP)  # resv held (dma_buf_vunmap asserted it)
    ubuf.vmap_cnt -= 1


def begin_cpu_udmabuf(buf: DmaBuf, direction: int) -> None:
    """begin_cpu_udmabuf: build the sg table on first use, else sync it for the CPU.
    No lock: ubuf->sg is read and set plain."""
    ubuf: Udmabuf = buf.priv
    track.read(ubuf, *_SG)
    if not ubuf.sg:
        if ubuf.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "begin_cpu_udmabuf: sg table allocation failed "
                       "(injected)")
        track.write(ubuf, *_SG)
        ubuf.sg = True


def end_cpu_udmabuf(buf: DmaBuf, direction: int) -> None:
    """end_cpu_udmabuf: EINVAL without a table (no DMA_BUF_SYNC_START came first)."""
    ubuf: Udmabuf = buf.priv
    track.read(ubuf, *_SG)
    if not ubuf.sg:
        raise kerr(errno.EINVAL, "end_cpu_udmabuf: no sg table (sync END before START)")


def release_udmabuf(buf: DmaBuf) -> None:
    """release_udmabuf: put the sg table, unpin every folio."""
    ubuf: Udmabuf = buf.priv
    track.write(ubuf, *_SG)
    ubuf.sg = False
    ubuf.unpin_all()
    ubuf.pages.clear()


UDMABUF_OPS = DmaBufOps(map_dma_buf=map_udmabuf, unmap_dma_buf=unmap_udmabuf,
                        release=release_udmabuf, mmap=mmap_udmabuf, fault=udmabuf_vm_fault,
                        vmap=vmap_udmabuf, vunmap=vunmap_udmabuf,
                        begin_cpu_access=begin_cpu_udmabuf, end_cpu_access=end_cpu_udmabuf,
                        memory_model=PINNED, exp_name="udmabuf")


def memfd_pin_folios(memfd: MemfdFile, start: int, end: int) -> Pin:
    """memfd_pin_folios (mm/gup.c) for shmem: ``[start, end]`` inclusive; the folios found in
    the page cache, or allocated (memfd_alloc_folio -> shmem_read_folio), each pinned."""
    if start < 0 or start > end:
        raise kerr(errno.EINVAL, f"memfd_pin_folios: empty or negative range [{start:#x}, "
                   f"{end:#x}]")
    last = end + 1
    if end >= memfd.i_size:  # mm/gup.c compares bytes: a partial last page is refused
        raise kerr(errno.EINVAL, f"memfd_pin_folios: [{start:#x}, {last:#x}) reaches past "
                   f"i_size {memfd.i_size:#x} of {memfd.name} (end >= i_size_read)")
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


class UdmabufItem(NamedTuple):
    """One range of a create request (struct udmabuf_create_item): ``size`` bytes at
    ``offset`` of the memfd behind fd ``memfd``."""

    memfd: int
    offset: int
    size: int


def udmabuf_create(proc: Process, flags: int, items: list[UdmabufItem]) -> int:
    """udmabuf_create: check the items, pin each memfd range (fget … fput per item: the pins,
    not the file, keep the pages), export, install the fd; returns the new dma-buf fd."""
    kernel = proc.kernel
    sched = kernel.sched
    if sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "udmabuf_create: kzalloc failed (injected)")
    limit_mb = kernel.profile.udmabuf_size_limit_mb if size_limit_mb is None else size_limit_mb
    pglimit = (limit_mb * 1024 * 1024) >> L.PAGE_SHIFT
    pgcnt = 0
    for i, (_, offset, size) in enumerate(items):
        if offset & (PAGE - 1):
            raise kerr(errno.EINVAL, f"udmabuf: item {i}: offset {offset:#x} not page aligned")
        if size & (PAGE - 1):
            raise kerr(errno.EINVAL, f"udmabuf: item {i}: size {size:#x} not page aligned")
        pgcnt += size >> L.PAGE_SHIFT
        if pgcnt > pglimit:
            raise kerr(errno.EINVAL, f"udmabuf: {pgcnt} pages exceed size_limit_mb "
                       f"({limit_mb} MiB)")
    if not pgcnt:
        raise kerr(errno.EINVAL, "udmabuf: size 0 (no pages)")
    if sched.fault("kvmalloc"):
        raise kerr(errno.ENOMEM, "udmabuf_create: kvmalloc of the page arrays failed "
                   "(injected)")
    ubuf = Udmabuf(kernel)
    try:
        for i, item in enumerate(items):
            f = proc.fget_or_none(item.memfd)
            if f is None:
                raise kerr(errno.EBADFD, f"udmabuf: item {i}: fd {item.memfd} is not open "
                           "(fget)")
            try:
                # inode_lock_shared against a concurrent memfd_add_seals
                sched.point(f"{f.name}.i_rwsem", "r")
                memfd = check_memfd_seals(f)
                offset = item.offset
                loff = offset - (1 << 64) if offset > LOFF_MAX else offset
                ubuf.pin_folios(memfd, loff, item.size)
            finally:
                fput(f)
        buf = core.dma_buf_export(kernel, UDMABUF_OPS, ubuf.size, priv=ubuf, flags=L.O_RDWR)
    except OSError:
        ubuf.unpin_all()
        raise
    sched.emit("udmabuf", "create", buf=buf.name, items=len(items), size=ubuf.size)
    cloexec = L.O_CLOEXEC if flags & U.UDMABUF_FLAGS_CLOEXEC else 0
    return core.dma_buf_fd(proc, buf, cloexec)  # EMFILE: the put releases (unpins) it


# ----- /dev/udmabuf and its ioctls (udmabuf_ioctl) --------------------------------------------
def _not_a_udmabuf_ioctl(dev: File, proc: Process, cmd: int, arg: UserArg) -> int:
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: not a udmabuf ioctl")


UDMABUF_IOCTLS = IoctlTable("udmabuf", _not_a_udmabuf_ioctl)


@UDMABUF_IOCTLS.handler(U.UDMABUF_CREATE)
def udmabuf_ioctl_create(dev: File, proc: Process, arg: UserArg) -> int:
    """udmabuf_ioctl_create: copy the request in; one item."""
    c = arg.copy_from_user(U.udmabuf_create)
    return udmabuf_create(proc, c.flags, [UdmabufItem(c.memfd, c.offset, c.size)])


@UDMABUF_IOCTLS.handler(U.UDMABUF_CREATE_LIST)
def udmabuf_ioctl_create_list(dev: File, proc: Process, arg: UserArg) -> int:
    """udmabuf_ioctl_create_list: the header (``count`` within list_limit), then the items."""
    head = arg.copy_from_user(U.udmabuf_create_list)
    if head.count > list_limit:
        raise kerr(errno.EINVAL, f"UDMABUF_CREATE_LIST: count {head.count} > "
                   f"list_limit {list_limit}")
    item = ctypes.sizeof(U.udmabuf_create_item)
    raw = arg.read(item * head.count, ctypes.sizeof(U.udmabuf_create_list))
    items = [U.udmabuf_create_item.from_buffer_copy(raw, i * item) for i in range(head.count)]
    return udmabuf_create(proc, head.flags,
                          [UdmabufItem(it.memfd, it.offset, it.size) for it in items])


class UdmabufDevFile(File):
    """An open /dev/udmabuf (udmabuf_fops: unlocked_ioctl only)."""

    kind = "udmabuf-dev"
    ioctl_table = UDMABUF_IOCTLS


@initcall("device")  # module_init(udmabuf_dev_init)
def udmabuf_init(kernel: Kernel) -> None:
    """udmabuf_dev_init: misc_register /dev/udmabuf."""
    kernel.register_device("/dev/udmabuf",
                           lambda proc, flags: UdmabufDevFile(kernel, flags, "/dev/udmabuf"))
