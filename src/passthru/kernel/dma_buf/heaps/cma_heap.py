"""The CMA heap: /dev/dma_heap/<area> for the default CMA area, "reserved"
(drivers/dma-buf/heaps/cma_heap.c; the area itself is ../cma.py).

One physically contiguous range per buffer from the area, aligned to min(get_order(len),
CONFIG_CMA_ALIGNMENT) pages; an exhausted area is ENOMEM. mmap needs MAP_SHARED (EINVAL) and
makes the VMA VM_IO|VM_PFNMAP; its fault handler vmf_insert_pfn()s one page, SIGBUS past the
buffer. What both heaps' buffers share, and its locking, is heap_buffer.py; the ops are
:data:`CMA_HEAP_BUF_OPS`; the heap's private data is its :class:`~..cma.CmaArea`.

Invariants and units: those of heap_buffer.py; ``base`` is the run's physical address and
``pagecount`` its pages (0 once released), the run page-order aligned.
Locking: heap_buffer.py for the buffer, cma.py for the area; ``base`` and ``pagecount`` are
set before export and cleared at release.

Model deviation (docs/fidelity.md): the VMA is filled at mmap time (mm/vma.py's fault path
raises SIGBUS on a VM_PFNMAP hole without asking vm_ops->fault), which is what the first
faults would do.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import TYPE_CHECKING

from ....errors import kerr
from ....extents import Extent
from ...mm.mm import VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_PFNMAP
from ..cma import CMA_DEFAULT_SIZE, PAGE, CmaArea, cma_declare_default
from ..core import DmaBuf, mmap_needs_shared, sigbus_past_the_end
from ..dma_heap import DmaHeap, dma_heap_add
from .heap_buffer import HEAP_BUFFER_OPS, HeapBuffer, heap_buffer_export

if TYPE_CHECKING:
    from ...core import Kernel
    from ...mm.vma import Vma

CONFIG_CMA_ALIGNMENT = 8  # orders: at most 1 MiB alignment for a CMA allocation


def get_order(size: int) -> int:
    """get_order: the smallest order with PAGE_SIZE << order >= size."""
    pages = (size + PAGE - 1) // PAGE
    return max(pages - 1, 0).bit_length()


class CmaHeapBuffer(HeapBuffer):
    """struct cma_heap_buffer: one contiguous run of the area."""

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

    def free(self) -> None:
        """cma_heap_dma_buf_release: cma_release the whole range."""
        if self.pagecount:
            self.area.release(self.base, self.pagecount)
            self.pagecount = 0
        self.pages.clear()


def cma_heap_mmap(buf: DmaBuf, vma: Vma) -> None:
    """cma_heap_mmap: MAP_SHARED only; VM_IO|VM_PFNMAP, pages inserted on fault."""
    mmap_needs_shared(vma, "CMA heap buffer")
    vma.vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP
    # What cma_heap_vm_fault would insert, page by page, on first touch (see the module).
    buf.priv.remap(vma)


def cma_heap_vm_fault(buf: DmaBuf, vma: Vma, start: int, end: int,
                      write: bool) -> list[Extent[int]]:
    """cma_heap_vm_fault: vmf_insert_pfn of the buffer's page; SIGBUS past the end."""
    buffer: CmaHeapBuffer = buf.priv
    sigbus_past_the_end(vma, start, end, buffer.len, "cma heap")
    return [Extent(start, end, buffer.base + start)]


CMA_HEAP_BUF_OPS = replace(HEAP_BUFFER_OPS, mmap=cma_heap_mmap, fault=cma_heap_vm_fault,
                           exp_name="cma-heap")


def cma_heap_allocate(heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
    return heap_buffer_export(heap, "cma_heap_allocate",
                              lambda: CmaHeapBuffer(heap.kernel, heap.priv, length),
                              CMA_HEAP_BUF_OPS, length, fd_flags)


def add_default_cma_heap(kernel: Kernel) -> None:
    """add_default_cma_heap: reserve the default CMA area — the machine's ``cma_size`` if it
    has one, else :data:`~..cma.CMA_DEFAULT_SIZE` — and give it a heap when it could be
    reserved."""
    size = int(getattr(kernel.machine, "cma_size", CMA_DEFAULT_SIZE))
    area = cma_declare_default(kernel, size)
    if area is not None:
        dma_heap_add(kernel, area.name, cma_heap_allocate, priv=area)
