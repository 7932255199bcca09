"""The system heap: /dev/dma_heap/system (drivers/dma-buf/heaps/system_heap.c).

Pages from the page allocator (here: phys.alloc, first fit, in as many extents as free RAM
gives); mmap remap_pfn_range()s the whole VMA at mmap time (special PTEs: VM_IO|VM_PFNMAP, so
GUP refuses them with EFAULT); vmap; begin/end_cpu_access sync the mapped attachments (no-ops
in a cache-coherent model). What both heaps' buffers share, and its locking, is
heap_buffer.py; the ops are :data:`SYSTEM_HEAP_BUF_OPS`.

Invariants and units: those of heap_buffer.py; the memory is RAM owned by
``dma_heap:system`` from allocation to release. Locking: heap_buffer.py (this module adds no
shared state).

Model deviation (docs/fidelity.md): MAP_PRIVATE is refused with EINVAL — the system heap has
no such check, but remap_pfn_range() refuses a COW mapping unless one call covers the whole
VMA, so a real kernel refuses a private mapping spanning more than one allocation chunk and
accepts one inside a single chunk (e.g. a one-page buffer). Leaves out: the order-8/4/0
chunking (the sg table's entries), the system_cc_shared heap, cgroup memory accounting
(``mem_accounting``), sysfs/debugfs stats.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ....hw.physmem import Owner
from ..core import DmaBuf, mmap_needs_shared
from ..dma_heap import DmaHeap, dma_heap_add
from .heap_buffer import HEAP_BUFFER_OPS, HeapBuffer, heap_buffer_export

if TYPE_CHECKING:
    from ...core import Kernel
    from ...mm.vma import Vma


class SystemHeapBuffer(HeapBuffer):
    """struct system_heap_buffer: pages from the page allocator."""

    exp_name = "system-heap"

    def __init__(self, kernel: Kernel, length: int) -> None:
        super().__init__(kernel, length)
        pos = 0
        for s, e in kernel.phys.alloc(length, Owner("dma_heap:system")):
            self.pages.set(pos, pos + (e - s), s)
            pos += e - s

    def free(self) -> None:
        """system_heap_dma_buf_release: __free_pages every chunk."""
        for p, q in self.extents():
            self.kernel.phys.release(p, q)
        self.pages.clear()


def system_heap_mmap(buf: DmaBuf, vma: Vma) -> None:
    # The kernel's refusal comes from remap_pfn_range on a COW mapping (see the module).
    mmap_needs_shared(vma, "system heap buffer (remap_pfn_range of a COW mapping)")
    buf.priv.remap(vma)


SYSTEM_HEAP_BUF_OPS = replace(HEAP_BUFFER_OPS, mmap=system_heap_mmap, exp_name="system-heap")


def system_heap_allocate(heap: DmaHeap, length: int, fd_flags: int, heap_flags: int) -> DmaBuf:
    return heap_buffer_export(heap, "system_heap_allocate",
                              lambda: SystemHeapBuffer(heap.kernel, length),  # ENOMEM: no RAM
                              SYSTEM_HEAP_BUF_OPS, length, fd_flags)


def system_heap_create(kernel: Kernel) -> None:
    """system_heap_create: /dev/dma_heap/system, always."""
    dma_heap_add(kernel, "system", system_heap_allocate)
