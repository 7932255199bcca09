"""A movable device-memory exporter: a GPU-like device whose buffer migrates between VRAM and
system RAM and tells dynamic importers (the TTM pattern of drivers/gpu/drm/ttm and amdgpu's /
xe's dma-buf exporters, include/linux/dma-buf.h "move_notify").

A migration: take the resv lock; refuse while pinned (EBUSY: pinned memory never moves);
publish a KERNEL-usage fence for the move; invalidate the importers' mappings; wait for every
fence already published (importers' DMA jobs) — TTM's ttm_bo_wait_ctx; copy to the new
placement; free the old one; signal the move fence; unlock. Static importers pin on map, so
their buffers stay put. Leaves out: eviction heuristics, GPU page tables, the copy engine
(the copy happens in the CPU's model time, as one step).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...hw.physmem import Owner
from ...uapi import linux as L
from ..cgroup.dmem import DmemRegion
from . import core
from .core import MOVABLE, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping
from .fence import DmaFence
from .resv import DMA_RESV_USAGE_BOOKKEEP, DMA_RESV_USAGE_KERNEL

if TYPE_CHECKING:
    from ..core import Kernel


class MovableExporter(DmaBufOps):
    memory_model = MOVABLE
    exp_name = "gpu-movable"

    def __init__(self, kernel: Kernel, size: int, placement: str = "vram",
                 dmem: DmemRegion | None = None) -> None:
        self.kernel = kernel
        self.dmem = dmem  # the device's VRAM region in the dmem cgroup, if accounted
        self.size = (size + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1)
        self.placement = placement
        self.extents = kernel.phys.alloc(self.size, Owner(f"gpu:{placement}"))
        self.pin_count = 0
        self.moves = 0

    def pin(self, attach: DmaBufAttachment) -> None:
        # Pinning device memory charges the dmem cgroup (a pinned buffer cannot be evicted);
        # over the limit the pin fails and nothing is charged or pinned.
        if self.dmem is not None and self.placement == "vram":
            self.dmem.try_charge(self.size, f"pin of {attach.dmabuf.name}")
        self.pin_count += 1

    def unpin(self, attach: DmaBufAttachment) -> None:
        self.pin_count -= 1
        if self.dmem is not None and self.placement == "vram":
            self.dmem.uncharge(self.size)

    def map_dma_buf(self, attach: DmaBufAttachment, direction: int) -> DmaMapping:
        return DmaMapping([(s, e - s, s) for s, e in self.extents])

    def unmap_dma_buf(self, attach: DmaBufAttachment, mapping: DmaMapping, d: int) -> None:
        pass

    def release(self, buf: DmaBuf) -> None:
        for s, e in self.extents:
            self.kernel.phys.release(s, e)
        self.extents = []

    def migrate(self, buf: DmaBuf, to: str) -> None:
        """Move the buffer to placement ``to`` ("vram" or "system")."""
        sched = self.kernel.sched
        bugs = self.kernel.profile.bugs
        buf.resv.lock_ctx()
        try:
            if self.pin_count and "dma_buf.move_pinned" not in bugs:
                raise kerr(errno.EBUSY, f"migrate: {buf.name} is pinned")
            if self.pin_count:
                sched.violation("pinned-moved", f"{buf.name} moved while pinned "
                                f"({self.pin_count} pin(s))")
            fence = DmaFence(sched, f"{buf.name}.move{self.moves}")
            buf.resv.add_fence(fence, DMA_RESV_USAGE_KERNEL)
            core.dma_buf_move_notify(buf)
            if "dma_buf.move_skips_fence_wait" not in bugs:
                for f in buf.resv.pending(DMA_RESV_USAGE_BOOKKEEP):
                    if f is not fence:
                        f.wait()
            new = self.kernel.phys.alloc(self.size, Owner(f"gpu:{to}"))
            self._copy(self.extents, new)
            sched.point(f"{buf.name}.mem", "w")  # the old memory is about to go
            for s, e in self.extents:
                self.kernel.phys.release(s, e)
            self.extents = new
            self.placement = to
            self.moves += 1
            fence.signal()
            sched.emit("dma_buf", "moved", buf=buf.name, to=to)
        finally:
            buf.resv.unlock()

    def _copy(self, old: list[tuple[int, int]], new: list[tuple[int, int]]) -> None:
        data = self.kernel.phys.data
        src = [(s, e) for s, e in old]
        pos = 0
        for ns, ne in new:
            n = ne - ns
            off = 0
            while off < n:
                # find the source piece at linear offset pos + off
                acc = 0
                for s, e in src:
                    if acc + (e - s) > pos + off:
                        take = min(e - s - (pos + off - acc), n - off)
                        data.copy(s + (pos + off - acc), ns + off, take)
                        off += take
                        break
                    acc += e - s
            pos += n


def movable_dmabuf(kernel: Kernel, size: int, placement: str = "vram",
                   dmem: DmemRegion | None = None) -> DmaBuf:
    exp = MovableExporter(kernel, size, placement, dmem)
    try:
        return core.dma_buf_export(kernel, exp, exp.size, priv=exp)
    except OSError:
        for s, e in exp.extents:  # the error path frees the VRAM (found by fail_nth)
            kernel.phys.release(s, e)
        raise
