"""The DMA-BUF heap framework: /dev/dma_heap/<name> and its one ioctl
(drivers/dma-buf/dma-heap.c, include/uapi/linux/dma-heap.h). The heaps themselves are in
heaps/ (system_heap.c, cma_heap.c).

A heap is a character device whose only ioctl, DMA_HEAP_IOCTL_ALLOC, asks the heap's
allocate op for a buffer and returns it as a dma-buf fd.

dma_heap_ioctl, as in dma-heap.c (read from the kernel source; KERNEL.md §1 "Heaps"):
- dispatch is on ``_IOC_NR(cmd)`` alone: nr >= 1 is EINVAL (not ENOTTY); any type or size
  with nr 0 is ALLOC, its argument copied in/out as far as the caller's direction bits and
  size say (the rest zero-filled): a request without _IOC_WRITE reads as len 0 (EINVAL), an
  8-byte one allocates with fd_flags 0 and never copies the fd out; then the kernel's
  switch on the normalised command (:data:`DMA_HEAP_IOCTLS`) calls the handler;
- dma_heap_ioctl_allocate, in this order: ``fd`` != 0 EINVAL; ``fd_flags`` outside
  O_CLOEXEC|O_ACCMODE EINVAL; ``heap_flags`` != 0 EINVAL; ``len`` = PAGE_ALIGN(len) modulo
  2^64, 0 EINVAL (so len 0 and len > 2^64 - 4096 are EINVAL); then the heap allocates
  (ENOMEM), dma_buf_fd installs the fd with O_CLOEXEC if asked, the fd goes into ``fd``;
- the struct is copied back even when the call failed; a failed copy-back is EFAULT and
  leaves the new fd installed (7.3 behaviour; a 2026 patch reorders it, unmerged).
- the buffer's file takes ``fd_flags`` as its f_flags, so O_RDONLY gives a read-only dma-buf
  (a writable shared mmap of it is EACCES in mm/mmap.c).

Invariants: a heap's name is non-empty and unique (its node path); a successful ALLOC leaves
exactly one new fd holding the buffer's only reference.
Units: bytes (``len`` page-rounded); ioctl sizes in bytes as _IOC_SIZE gives them.
Locking: the heap list (dma-heap.c's ``heap_list_lock``) is the kernel's device table,
written at boot only; a :class:`DmaHeap` is immutable once added; an open heap file has no
state of its own. What an allocation touches is the heap's (heaps/).
Leaves out: dma_heap_get_name/drvdata users, the heap's class device and sysfs.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...uapi import dma_heap as H
from ...uapi import linux as L
from ...uapi.ioctl import _IOC_DIRSHIFT, _IOC_NRSHIFT, _IOC_READ, _IOC_SIZESHIFT, _IOC_WRITE
from ..fs.file import File
from ..fs.ioctl_table import IoctlTable
from . import core
from .core import DmaBuf

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg

PAGE = L.PAGE_SIZE
U64 = (1 << 64) - 1
DMA_HEAP_IOCTL_CMDS = (H.DMA_HEAP_IOCTL_ALLOC,)  # dma_heap_ioctl_cmds[], indexed by nr
IOC_IN = _IOC_WRITE << _IOC_DIRSHIFT
IOC_OUT = _IOC_READ << _IOC_DIRSHIFT
STACK_KDATA = 128  # dma_heap_ioctl's on-stack argument buffer; larger ones are kmalloc'ed

Allocate = Callable[["DmaHeap", int, int, int], DmaBuf]  # (heap, len, fd_flags, heap_flags)


def _ioc_nr(cmd: int) -> int:
    return (cmd >> _IOC_NRSHIFT) & 0xFF


def _ioc_size(cmd: int) -> int:
    return (cmd >> _IOC_SIZESHIFT) & 0x3FFF


def page_align(n: int) -> int:
    """PAGE_ALIGN on a 64-bit size_t: wraps to 0 above 2^64 - PAGE_SIZE."""
    return (n + PAGE - 1) & ~(PAGE - 1) & U64


@dataclass(frozen=True)
class DmaHeap:
    """struct dma_heap: a name (the node is /dev/dma_heap/<name>), the allocate op (its
    dma_heap_ops), the heap's private data."""

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
        """dma_heap_ioctl: normalise the request by its number, copy the argument in by the
        caller's size, run the handler of :data:`DMA_HEAP_IOCTLS`, copy the struct back
        whatever it returned."""
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
            DMA_HEAP_IOCTLS.dispatch(self, proc, kcmd, kdata)
        except OSError as e:
            err = e
        # dma_heap_ioctl copies the struct back whatever the handler returned.
        try:
            if out_size:
                arg.write(bytes(kdata[:out_size]))
        except OSError:
            raise kerr(errno.EFAULT, "dma_heap_ioctl: copy_to_user of the result failed "
                       "(a new fd, if any, stays installed)") from None
        if err is not None:
            raise err
        return 0


# ----- the handlers (dma_heap_ioctl's switch on kcmd); ``kdata`` is the kernel's copy -----
def _not_a_heap_ioctl(heapf: DmaHeapFile, proc: Process, cmd: int, kdata: bytearray) -> int:
    raise kerr(errno.ENOTTY, f"dma_heap_ioctl: {cmd:#x} has no handler")


DMA_HEAP_IOCTLS = IoctlTable("dma-heap", _not_a_heap_ioctl)


@DMA_HEAP_IOCTLS.handler(H.DMA_HEAP_IOCTL_ALLOC)
def dma_heap_ioctl_allocate(heapf: DmaHeapFile, proc: Process, kdata: bytearray) -> int:
    """dma_heap_ioctl_allocate + dma_heap_buffer_alloc, in the kernel's order: check the
    fields, allocate (the heap is the file's, held by the fd), install the fd, answer it."""
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
    heap = heapf.heap
    buf = heap.allocate(heap, length, fd_flags, int(data.heap_flags))
    fd = core.dma_buf_fd(proc, buf, fd_flags)  # EMFILE: the put releases the buffer
    data.fd = fd
    heapf.kernel.sched.emit("dma_heap", "alloc", heap=heap.name, buf=buf.name, len=length,
                            fd=fd)
    return 0
