"""What the system heap's and the CMA heap's buffers share (drivers/dma-buf/heaps/
system_heap.c and cma_heap.c each write it out: their ``dma_heap_attachment`` lists, the sg
table copy per attachment, begin/end_cpu_access over the mapped attachments, the vmap count).
One copy here; each heap's module adds its mmap, fault and release.

A heap buffer is a static exporter: memory model PINNED, no pin/unpin ops, the memory kept for
the buffer's whole life; dma-direct mapping (DMA address = physical address, one range per
physically contiguous extent). The ops are :data:`HEAP_BUFFER_OPS` (completed per heap with
``dataclasses.replace``); the buffer (``struct system_heap_buffer`` / ``cma_heap_buffer``) is
a :class:`HeapBuffer` in ``dmabuf.priv``.

Invariants: ``pages`` covers ``[0, len)`` from allocation until release, and is empty after;
an attachment's exporter data (``attach.priv``) exists exactly between attach and detach;
``vaddr`` is non-zero exactly while ``vmap_cnt`` > 0.
Units: bytes; ``pages`` maps buffer offsets to physical byte addresses (linear extents);
every physical range is page aligned.

Which lock protects which field:
- the buffer's own location ``<heap>-buffer`` — its attachment list (the ``attach.priv`` it
  hands out), ``vmap_cnt`` and ``vaddr``: ``buffer->lock``, a mutex the model leaves
  implicit: the location is ``atomic=True`` (sim/track.py), as nothing schedules inside the
  sections it guards;
- ``pages`` (``<heap>-buffer.pages``): written when the buffer is made and when it is
  released, read in between: plain, no lock (the kernel's sg table is immutable too);
- ``kernel``, ``len``: set before export, read-only afterwards.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from ....errors import kerr
from ....extents import RangeMap
from ....sim import track
from .. import core
from ..core import PINNED, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping, dma_direct

if TYPE_CHECKING:
    from ...core import Kernel
    from ...mm.vma import Vma
    from ..dma_heap import DmaHeap


class HeapBuffer(track.Tracked):
    """A heap buffer: ``pages`` maps buffer offsets to physical addresses (linear extents).
    Its own location (attachments, vmap count and address) is guarded by ``buffer->lock``,
    implicit here (atomic). ``exp_name`` names it (the heap's exporter name)."""

    exp_name = "heap"

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

    def remap(self, vma: Vma) -> None:
        """remap_pfn_range every page of the VMA: special PTEs (VM_IO|VM_PFNMAP)."""
        start = vma.pgoff
        end = start + (vma.end - vma.start)
        for s, e, p in self.pages.overlapping(start, end):
            vma.remap_pfn_range(vma.start + (s - start), p, e - s)

    def free(self) -> None:
        """Give the memory back (the heap's release)."""
        raise NotImplementedError


# ----- dma_buf_ops both heaps have --------------------------------------------------------
def heap_attach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    """system_heap_attach / cma_heap_attach: kzalloc + copy of the sg table."""
    buffer: HeapBuffer = buf.priv
    if buffer.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, f"attach: {buf.exp_name} attachment allocation failed "
                   "(injected)")
    track.write(buffer)  # list_add to buffer->attachments under buffer->lock
    attach.priv = {"mapped": False}


def heap_detach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    track.write(buf.priv)  # list_del under buffer->lock
    attach.priv = None


def heap_map_dma_buf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    """dma_map_sgtable on dma-direct: the DMA address is the physical address."""
    attach.priv["mapped"] = True
    return dma_direct(attach.dmabuf.priv.extents())


def heap_unmap_dma_buf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    attach.priv["mapped"] = False


def heap_begin_cpu_access(buf: DmaBuf, direction: int) -> None:
    """dma_sync_sgtable_for_cpu on mapped attachments: nothing to do, caches coherent."""
    track.read(buf.priv)  # the walk of buffer->attachments, under buffer->lock


def heap_end_cpu_access(buf: DmaBuf, direction: int) -> None:
    """dma_sync_sgtable_for_device on mapped attachments: likewise."""
    track.read(buf.priv)


def heap_vmap(buf: DmaBuf) -> int:
    buffer: HeapBuffer = buf.priv
    track.write(buffer)  # buffer->lock
    if not buffer.vmap_cnt:
        if buffer.kernel.sched.fault("vmap"):
            raise kerr(errno.ENOMEM, f"vmap: {buf.exp_name} vmap failed (injected)")
        buffer.vaddr = core.vmap_address(buffer.kernel)
    buffer.vmap_cnt += 1
    return buffer.vaddr


def heap_vunmap(buf: DmaBuf) -> None:
    buffer: HeapBuffer = buf.priv
    track.write(buffer)  # buffer->lock
    buffer.vmap_cnt -= 1
    if not buffer.vmap_cnt:
        buffer.vaddr = 0


def heap_release(buf: DmaBuf) -> None:
    """system_heap_dma_buf_release / cma_heap_dma_buf_release: the memory goes back."""
    buf.priv.free()


HEAP_BUFFER_OPS = DmaBufOps(attach=heap_attach, detach=heap_detach,
                            map_dma_buf=heap_map_dma_buf, unmap_dma_buf=heap_unmap_dma_buf,
                            release=heap_release, begin_cpu_access=heap_begin_cpu_access,
                            end_cpu_access=heap_end_cpu_access, vmap=heap_vmap,
                            vunmap=heap_vunmap, memory_model=PINNED)


def heap_buffer_export(heap: DmaHeap, what: str, make: Callable[[], HeapBuffer],
                       ops: DmaBufOps, length: int, fd_flags: int) -> DmaBuf:
    """The allocate op's common part: kzalloc the buffer, make it (``make``: its memory,
    ENOMEM when there is none), export it with the fd's flags; an export that fails gives the
    memory back."""
    if heap.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, f"{what}: buffer allocation failed (injected)")
    buffer = make()
    try:
        return core.dma_buf_export(heap.kernel, ops, length, priv=buffer, flags=fd_flags)
    except OSError:
        buffer.free()
        raise

