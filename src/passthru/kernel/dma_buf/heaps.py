"""DMA-BUF heaps: /dev/dma_heap/<name> and the two heaps every distribution kernel has
(drivers/dma-buf/dma-heap.c, drivers/dma-buf/heaps/system_heap.c, heaps/cma_heap.c).

A heap is a character device whose only ioctl, DMA_HEAP_IOCTL_ALLOC, allocates a buffer and
returns it as a dma-buf fd. The exporter keeps the memory for the buffer's whole life: memory
model PINNED, no pin/unpin ops (a static exporter), dma-direct mapping (DMA address = physical
address, one range per physically contiguous extent).

dma_heap_ioctl, as in dma-heap.c (read from the kernel source; KERNEL.md §1 "Heaps"):
- dispatch is on ``_IOC_NR(cmd)`` alone: nr >= 1 is EINVAL (not ENOTTY); any type or size
  with nr 0 is ALLOC, its argument copied in/out as far as the caller's direction bits and
  size say (the rest zero-filled): a request without _IOC_WRITE reads as len 0 (EINVAL), an
  8-byte one allocates with fd_flags 0 and never copies the fd out;
- dma_heap_ioctl_allocate, in this order: ``fd`` != 0 EINVAL; ``fd_flags`` outside
  O_CLOEXEC|O_ACCMODE EINVAL; ``heap_flags`` != 0 EINVAL; ``len`` = PAGE_ALIGN(len) modulo
  2^64, 0 EINVAL (so len 0 and len > 2^64 - 4096 are EINVAL); then the heap allocates
  (ENOMEM), dma_buf_fd installs the fd with O_CLOEXEC if asked, the fd goes into ``fd``;
- the struct is copied back even when the call failed; a failed copy-back is EFAULT and
  leaves the new fd installed (7.3 behaviour; a 2026 patch reorders it, unmerged).
- the buffer's file takes ``fd_flags`` as its f_flags, so O_RDONLY gives a read-only dma-buf
  (a writable shared mmap of it is EACCES in mm/mmap.c).

System heap (system_heap.c): pages from the page allocator (here: phys.alloc, first fit, in
as many extents as free RAM gives); mmap remap_pfn_range()s the whole VMA at mmap time
(special PTEs: VM_IO|VM_PFNMAP, so GUP refuses them with EFAULT); vmap; begin/end_cpu_access
sync the mapped attachments (no-ops in a cache-coherent model).

CMA heap (cma_heap.c, the default CMA area's heap, named after the area, "reserved"): one
physically contiguous range per buffer from a fixed area carved out of RAM at boot
(:class:`CmaArea`, :data:`CMA_DEFAULT_SIZE` by default), aligned to min(get_order(len),
CONFIG_CMA_ALIGNMENT) pages; an exhausted area is ENOMEM. mmap needs MAP_SHARED (EINVAL) and
makes the VMA VM_IO|VM_PFNMAP; its fault handler vmf_insert_pfn()s one page, SIGBUS past the
buffer.

Units: bytes; every physical range is page aligned. Locking: in the kernel ``buffer->lock``
(a mutex) protects a buffer's attachment list and vmap count and the CMA area's spinlock its
bitmap; the model has no scheduling point inside those sections, so they are atomic here:
tracked locations ``<heap>-buffer`` and ``cma:<area>.bitmap`` made with ``atomic=True``
(sim/track.py). A buffer's pages (``<heap>-buffer.pages``) are written when it is made and
when it is released, read in between: plain.

Model deviations (docs/fidelity.md): both heaps refuse MAP_PRIVATE with EINVAL — the system
heap has no such check, but remap_pfn_range() refuses a COW mapping unless one call covers
the whole VMA, so a real kernel refuses a private mapping spanning more than one allocation
chunk and accepts one inside a single chunk (e.g. a one-page buffer); the CMA heap's VMA is
filled at mmap time (mm/vma.py's fault path raises SIGBUS on a VM_PFNMAP hole without asking
vm_ops->fault), which is what the first faults would do; the CMA area is reserved only when a
RAM range holds four times its size. Leaves out: the system heap's order-8/4/0 chunking
(the sg table's entries), the system_cc_shared heap, cgroup memory accounting
(``mem_accounting``), sysfs/debugfs stats, heap-specific dma_heap_get_name/drvdata users.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...hw.physmem import Owner
from ...sim import track
from ...uapi import dma_heap as H
from ...uapi import linux as L
from ...uapi.ioctl import _IOC_DIRSHIFT, _IOC_NRSHIFT, _IOC_READ, _IOC_SIZESHIFT, _IOC_WRITE
from ..fs.file import File
from ..mm.vma import VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_MAYSHARE, VM_PFNMAP, VM_SHARED
from . import core
from .core import PINNED, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

PAGE = L.PAGE_SIZE
U64 = (1 << 64) - 1
MiB = 1 << 20
CMA_DEFAULT_SIZE = 256 * MiB  # the default CMA area (CONFIG_CMA_SIZE_MBYTES / cma=256M)
CMA_DEFAULT_NAME = "reserved"  # the name dma_contiguous_reserve gives the default area
CONFIG_CMA_ALIGNMENT = 8  # orders: at most 1 MiB alignment for a CMA allocation
DMA_HEAP_IOCTL_CMDS = (H.DMA_HEAP_IOCTL_ALLOC,)
IOC_IN = _IOC_WRITE << _IOC_DIRSHIFT
IOC_OUT = _IOC_READ << _IOC_DIRSHIFT
STACK_KDATA = 128  # dma_heap_ioctl's on-stack argument buffer; larger ones are kmalloc'ed
VMALLOC_START = 0xFFFFC90000000000  # x86-64: where vmap() addresses come from

Allocate = Callable[["DmaHeap", int, int, int], DmaBuf]


def _ioc_nr(cmd: int) -> int:
    return (cmd >> _IOC_NRSHIFT) & 0xFF


def _ioc_size(cmd: int) -> int:
    return (cmd >> _IOC_SIZESHIFT) & 0x3FFF


def page_align(n: int) -> int:
    """PAGE_ALIGN on a 64-bit size_t: wraps to 0 above 2^64 - PAGE_SIZE."""
    return (n + PAGE - 1) & ~(PAGE - 1) & U64


def vmap_address(kernel: Kernel) -> int:
    """A vmalloc-area address for vmap(): distinct per call, deterministic."""
    return VMALLOC_START + kernel.next_id("vmap") * (1 << 32)


# ----- the framework: dma-heap.c ------------------------------------------------------------
@dataclass
class DmaHeap:
    """struct dma_heap: a name (the node is /dev/dma_heap/<name>), allocate, private data."""

    kernel: Kernel
    name: str
    allocate: Allocate
    priv: Any = None

    @property
    def path(self) -> str:
        return f"/dev/dma_heap/{self.name}"


def dma_heap_add(kernel: Kernel, name: str, allocate: Allocate, priv: Any = None) -> DmaHeap:
    """dma_heap_add: a named heap with an allocate op gets its device node."""
    if not name:
        raise kerr(errno.EINVAL, "dma_heap_add: cannot add a heap without a name")
    heap = DmaHeap(kernel, name, allocate, priv)
    if heap.path in kernel.devices:
        raise kerr(errno.EINVAL, f"dma_heap_add: already registered heap named {name}")
    kernel.register_device(heap.path, lambda proc, flags: DmaHeapFile(heap, flags))
    return heap


class DmaHeapFile(File):
    """An open /dev/dma_heap/<name> (dma_heap_fops: open, unlocked_ioctl; nonseekable)."""

    kind = "dma-heap"

    def __init__(self, heap: DmaHeap, flags: int) -> None:
        super().__init__(heap.kernel, flags, heap.path)
        self.heap = heap

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        """dma_heap_ioctl: dispatch on the number only, copy in/out by the caller's size."""
        nr = _ioc_nr(cmd)
        if nr >= len(DMA_HEAP_IOCTL_CMDS):
            raise kerr(errno.EINVAL, f"dma_heap_ioctl: nr {nr} >= {len(DMA_HEAP_IOCTL_CMDS)} "
                       "(ARRAY_SIZE(dma_heap_ioctl_cmds))")
        kcmd = DMA_HEAP_IOCTL_CMDS[nr]
        drv_size = _ioc_size(kcmd)
        out_size = in_size = _ioc_size(cmd)
        if not cmd & kcmd & IOC_IN:
            in_size = 0
        if not cmd & kcmd & IOC_OUT:
            out_size = 0
        ksize = max(in_size, out_size, drv_size)
        if ksize > STACK_KDATA and self.kernel.sched.fault("kmalloc"):
            raise kerr(errno.ENOMEM, "dma_heap_ioctl: kmalloc of the argument failed (injected)")
        kdata = bytearray(arg.read(in_size) if in_size else b"")
        kdata += bytes(ksize - in_size)
        err: OSError | None = None
        try:
            self.ioctl_allocate(proc, kdata)
        except OSError as e:
            err = e
        # dma_heap_ioctl copies the struct back whatever the allocation returned.
        try:
            if out_size:
                arg.write(bytes(kdata[:out_size]))
        except OSError:
            raise kerr(errno.EFAULT, "dma_heap_ioctl: copy_to_user of the result failed "
                       "(a new fd, if any, stays installed)") from None
        if err is not None:
            raise err
        return 0

    def ioctl_allocate(self, proc: Process, kdata: bytearray) -> None:
        """dma_heap_ioctl_allocate + dma_heap_buffer_alloc, in the kernel's order."""
        data = H.dma_heap_allocation_data.from_buffer(kdata)
        if data.fd:
            raise kerr(errno.EINVAL, f"DMA_HEAP_IOCTL_ALLOC: fd {data.fd} must be 0 on input")
        if data.fd_flags & ~H.DMA_HEAP_VALID_FD_FLAGS:
            raise kerr(errno.EINVAL, f"DMA_HEAP_IOCTL_ALLOC: fd_flags {data.fd_flags:#x} outside "
                       "O_CLOEXEC|O_ACCMODE (DMA_HEAP_VALID_FD_FLAGS)")
        if data.heap_flags & ~H.DMA_HEAP_VALID_HEAP_FLAGS:
            raise kerr(errno.EINVAL, f"DMA_HEAP_IOCTL_ALLOC: heap_flags {data.heap_flags:#x} "
                       "must be 0 (DMA_HEAP_VALID_HEAP_FLAGS)")
        length = page_align(data.len)
        if not length:
            raise kerr(errno.EINVAL, f"DMA_HEAP_IOCTL_ALLOC: len {data.len:#x} is 0 after "
                       "PAGE_ALIGN")
        fd_flags = int(data.fd_flags)
        heap_flags = int(data.heap_flags)
        buf = self.heap.allocate(self.heap, length, fd_flags, heap_flags)
        fd = core.dma_buf_fd(proc, buf, fd_flags)  # EMFILE: the put releases the buffer
        H.dma_heap_allocation_data.from_buffer(kdata).fd = fd
        self.kernel.sched.emit("dma_heap", "alloc", heap=self.heap.name, buf=buf.name,
                               len=length, fd=fd)


# ----- what both heaps' buffers share -------------------------------------------------------
class HeapBuffer(DmaBufOps, track.Tracked):
    """A heap buffer: ``pages`` maps buffer offsets to physical addresses (linear extents).
    Its own location (attachments, vmap count and address) is guarded by ``buffer->lock``,
    implicit here (atomic)."""

    memory_model = PINNED

    def __init__(self, kernel: Kernel, length: int) -> None:
        self.kernel = kernel
        self.len = length
        self.pages: RangeMap[int] = RangeMap(linear=True,
                                             label=f"{self.exp_name}-buffer.pages")
        self.vmap_cnt = 0
        self.vaddr = 0
        self.track_init(f"{self.exp_name}-buffer", atomic=True)

    def extents(self) -> list[tuple[int, int]]:
        """The physical extents, in buffer order (coalesced)."""
        return [(p, p + (e - s)) for s, e, p in self.pages]

    def attach(self, buf: DmaBuf, attach: DmaBufAttachment) -> None:
        # system_heap_attach / cma_heap_attach: kzalloc + copy of the sg table
        if self.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, f"attach: {self.exp_name} attachment allocation failed "
                       "(injected)")
        track.write(self)  # list_add to buffer->attachments under buffer->lock
        attach.priv = {"mapped": False}

    def detach(self, buf: DmaBuf, attach: DmaBufAttachment) -> None:
        track.write(self)  # list_del under buffer->lock
        attach.priv = None

    def map_dma_buf(self, attach: DmaBufAttachment, direction: int) -> DmaMapping:
        # dma_map_sgtable on dma-direct: the DMA address is the physical address.
        attach.priv["mapped"] = True
        return DmaMapping([(p, e - s, p) for s, e, p in self.pages])

    def unmap_dma_buf(self, attach: DmaBufAttachment, mapping: DmaMapping, d: int) -> None:
        attach.priv["mapped"] = False

    def begin_cpu_access(self, buf: DmaBuf, direction: int) -> None:
        """dma_sync_sgtable_for_cpu on mapped attachments: nothing to do, caches coherent."""
        track.read(self)  # the walk of buffer->attachments, under buffer->lock

    def end_cpu_access(self, buf: DmaBuf, direction: int) -> None:
        """dma_sync_sgtable_for_device on mapped attachments: likewise."""
        track.read(self)

    def vmap(self, buf: DmaBuf) -> int:
        track.write(self)  # buffer->lock
        if not self.vmap_cnt:
            if self.kernel.sched.fault("vmap"):
                raise kerr(errno.ENOMEM, f"vmap: {self.exp_name} vmap failed (injected)")
            self.vaddr = vmap_address(self.kernel)
        self.vmap_cnt += 1
        return self.vaddr

    def vunmap(self, buf: DmaBuf) -> None:
        track.write(self)  # buffer->lock
        self.vmap_cnt -= 1
        if not self.vmap_cnt:
            self.vaddr = 0

    def _remap(self, vma: Vma) -> None:
        """remap_pfn_range every page of the VMA: special PTEs (VM_IO|VM_PFNMAP)."""
        start = vma.pgoff
        end = start + (vma.end - vma.start)
        for s, e, p in self.pages.overlapping(start, end):
            vma.remap_pfn_range(vma.start + (s - start), p, e - s)

    @staticmethod
    def _need_shared(vma: Vma, what: str) -> None:
        if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) == 0:
            raise kerr(errno.EINVAL, f"mmap: {what} needs MAP_SHARED")


# ----- system_heap.c ------------------------------------------------------------------------
class SystemHeapBuffer(HeapBuffer):
    exp_name = "system-heap"

    def __init__(self, kernel: Kernel, length: int) -> None:
        super().__init__(kernel, length)
        pos = 0
        for s, e in kernel.phys.alloc(length, Owner("dma_heap:system")):
            self.pages.set(pos, pos + (e - s), s)
            pos += e - s

    def mmap(self, buf: DmaBuf, vma: Vma) -> None:
        # The kernel's refusal comes from remap_pfn_range on a COW mapping (see the module).
        self._need_shared(vma, "system heap buffer (remap_pfn_range of a COW mapping)")
        self._remap(vma)

    def release(self, buf: DmaBuf) -> None:
        """system_heap_dma_buf_release: __free_pages every chunk."""
        self.free()

    def free(self) -> None:
        for p, q in self.extents():
            self.kernel.phys.release(p, q)
        self.pages.clear()


def system_heap_allocate(heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
    kernel = heap.kernel
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "system_heap_allocate: buffer allocation failed (injected)")
    buffer = SystemHeapBuffer(kernel, length)  # ENOMEM when RAM runs out
    try:
        return core.dma_buf_export(kernel, buffer, length, priv=buffer, flags=fd_flags)
    except OSError:
        buffer.free()
        raise


# ----- the CMA area (mm/cma.c) and cma_heap.c -----------------------------------------------
class CmaArea:
    """A contiguous memory area reserved at boot (cma_declare_contiguous: memblock takes it
    out of the page allocator). ``used`` holds the allocated ranges (the kernel's bitmap).

    Freed CMA memory has no owner in hw, so a device or CPU access to it after release is a
    physical-truth violation, as for any freed page."""

    def __init__(self, kernel: Kernel, name: str, base: int, size: int) -> None:
        self.kernel = kernel
        self.name = name
        self.base = base
        self.size = size
        self.used: RangeMap[bool] = RangeMap(label=f"cma:{name}.bitmap", atomic=True)  # cma->lock

    @property
    def end(self) -> int:
        return self.base + self.size

    def available(self) -> int:
        return self.size - self.used.total()

    def alloc(self, count: int, align: int) -> int | None:
        """cma_alloc: ``count`` pages aligned to 2^``align`` pages, first fit; None when no
        aligned free range is large enough (or an injected failure)."""
        if self.kernel.sched.fault("cma_alloc"):
            return None
        n = count * PAGE
        mask = (PAGE << align) - 1
        for gs, ge in self.used.gaps(self.base, self.end):
            s = (gs + mask) & ~mask
            if s + n <= ge:
                self.used.set(s, s + n, True)
                self.kernel.phys.set_owner(s, s + n, Owner(f"cma:{self.name}"))
                self.kernel.phys.data.zero(s, s + n)  # cma_heap_allocate clears the pages
                return s
        return None

    def release(self, start: int, count: int) -> None:
        """cma_release: back to the area. A pinned part (nothing pins CMA heap memory in the
        model: GUP refuses its mappings) would stay owned, as an orphan, until unpinned."""
        end = start + count * PAGE
        phys = self.kernel.phys
        for s, e, _ in phys.pins.overlapping(start, end):
            phys.set_owner(s, e, Owner(f"cma:{self.name}", "orphan"))
        for s, e in phys.pins.gaps(start, end):
            phys.disown(s, e)
            self.used.remove(s, e)


def cma_declare_default(kernel: Kernel, size: int = CMA_DEFAULT_SIZE,
                        name: str = CMA_DEFAULT_NAME) -> CmaArea | None:
    """dma_contiguous_reserve: carve ``size`` bytes off the top of the highest RAM range that
    holds four times as much, before anything is allocated. None if no range qualifies."""
    if size <= 0:
        return None
    phys = kernel.phys
    for s, e in sorted(kernel.machine.ram, reverse=True):
        if e - s >= 4 * size:
            base = (e - size) & ~(MiB - 1)
            if base < s or not phys.reserve(base, base + size):
                return None
            return CmaArea(kernel, name, base, size)
    return None


def get_order(size: int) -> int:
    """get_order: the smallest order with PAGE_SIZE << order >= size."""
    pages = (size + PAGE - 1) // PAGE
    return max(pages - 1, 0).bit_length()


class CmaHeapBuffer(HeapBuffer):
    exp_name = "cma-heap"

    def __init__(self, kernel: Kernel, area: CmaArea, length: int) -> None:
        super().__init__(kernel, length)
        self.area = area
        self.pagecount = length // PAGE
        base = area.alloc(self.pagecount, min(get_order(length), CONFIG_CMA_ALIGNMENT))
        if base is None:
            raise kerr(errno.ENOMEM, f"cma_heap_allocate: cma_alloc of {length:#x} bytes from "
                       f"area {area.name!r} failed ({area.available():#x} of "
                       f"{area.size:#x} free)")
        self.base = base
        self.pages.set(0, length, base)

    def mmap(self, buf: DmaBuf, vma: Vma) -> None:
        """cma_heap_mmap: MAP_SHARED only; VM_IO|VM_PFNMAP, pages inserted on fault."""
        self._need_shared(vma, "CMA heap buffer")
        vma.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
        # What cma_heap_vm_fault would insert, page by page, on first touch (see the module).
        self._remap(vma)

    def fault(self, buf: DmaBuf, vma: Vma, start: int, end: int,
              write: bool) -> list[tuple[int, int, int]]:
        """cma_heap_vm_fault: vmf_insert_pfn of the buffer's page; SIGBUS past the end."""
        if end > self.len:
            addr = vma.start + (max(start, self.len) - vma.pgoff)
            raise Fault(addr, "SIGBUS", "cma heap fault past the buffer (pgoff >= pagecount)")
        return [(start, end, self.base + start)]

    def release(self, buf: DmaBuf) -> None:
        """cma_heap_dma_buf_release: cma_release the whole range."""
        self.free()

    def free(self) -> None:
        if self.pagecount:
            self.area.release(self.base, self.pagecount)
            self.pagecount = 0
        self.pages.clear()


def cma_heap_allocate(heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
    kernel = heap.kernel
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "cma_heap_allocate: buffer allocation failed (injected)")
    buffer = CmaHeapBuffer(kernel, heap.priv, length)
    try:
        return core.dma_buf_export(kernel, buffer, length, priv=buffer, flags=fd_flags)
    except OSError:
        buffer.free()
        raise


# ----- boot -----------------------------------------------------------------------------------
def heaps_init(kernel: Kernel) -> None:
    """system_heap_create and add_default_cma_heap: /dev/dma_heap/system always, and
    /dev/dma_heap/reserved when the default CMA area could be reserved. The area's size is
    the machine's ``cma_size`` if it has one, else :data:`CMA_DEFAULT_SIZE`."""
    dma_heap_add(kernel, "system", system_heap_allocate)
    size = int(getattr(kernel.machine, "cma_size", CMA_DEFAULT_SIZE))
    area = cma_declare_default(kernel, size)
    if area is not None:
        dma_heap_add(kernel, area.name, cma_heap_allocate, priv=area)


__all__ = [
    "CMA_DEFAULT_SIZE",
    "CmaArea",
    "CmaHeapBuffer",
    "DmaHeap",
    "DmaHeapFile",
    "SystemHeapBuffer",
    "dma_heap_add",
    "heaps_init",
    "page_align",
]
