"""A movable device-memory exporter: a GPU-like device whose buffer migrates between VRAM and
system RAM and tells dynamic importers (the TTM pattern of drivers/gpu/drm/ttm and amdgpu's /
xe's dma-buf exporters, include/linux/dma-buf.h "move_notify").

A migration: take the resv lock; refuse while pinned (EBUSY: pinned memory never moves);
allocate the new placement (ENOMEM leaves the buffer as it was); publish a KERNEL-usage fence
for the move; invalidate the importers' mappings; wait for every fence already published
(importers' DMA jobs) — TTM's ttm_bo_wait_ctx; copy to the new placement; free the old one;
signal the move fence; unlock. Static importers pin on map, so
their buffers stay put. Leaves out: eviction heuristics, GPU page tables, the copy engine
(the copy happens in the CPU's model time, as one step).

The ops are the static :data:`MOVABLE_OPS`; the buffer object (TTM's ``ttm_buffer_object``,
reduced) is the :class:`MovableExporter` in ``dmabuf.priv``.

Invariants: a pinned buffer never moves (EBUSY; the seeded bug ``dma_buf.move_pinned`` moves
it and reports ``pinned-moved``); every fence a move publishes signals, with the error if the
move fails after publishing it; the old placement is freed only after the importers were
told and every published fence retired (``dma_buf.move_skips_fence_wait`` skips the wait).
Units: bytes; ``extents`` are physical (start, end) byte ranges in buffer order.

Which lock protects which field (sim/track.py; one location ``<buf>.placement``, plain):
- ``placement``, ``extents``, ``moves``: the resv lock, as TTM's bo->resource is —
  :meth:`MovableExporter.migrate` takes it, the map op runs under the core's assertion; the
  release reads them last, alone;
- ``pin_count``: the resv lock, as TTM's pin_count (dma_resv_assert_held in ttm_bo_pin/unpin):
  the pin/unpin ops run under dma_buf_pin/unpin's assertion;
- ``kernel``, ``size``, ``dmem``: set before the buffer is shared, read-only afterwards.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...hw.physmem import Owner
from ...sim import kinds, track
from ...sim.fields import Plain
from ...uapi import linux as L
from ..cgroup.dmem import DmemRegion
from ..profile import DMA_BUF_MOVE_PINNED, DMA_BUF_MOVE_SKIPS_FENCE_WAIT
from . import core
from .core import (
    MOVABLE,
    DmaBuf,
    DmaBufAttachment,
    DmaBufOps,
    DmaMapping,
    dma_direct,
)
from .fence import DmaFence
from .resv import DMA_RESV_USAGE_BOOKKEEP, DMA_RESV_USAGE_KERNEL

if TYPE_CHECKING:
    from ..core import Kernel

# The violations this file reports (sim/kinds.py).
kinds.register("pinned-moved", "dma-buf")

_PLACEMENT = (0, 1)
_PINS = (1, 2)


class MovableExporter(track.Tracked):
    """The buffer object (``dmabuf.priv``): its placement, its pins, and the move."""

    def __init__(self, kernel: Kernel, size: int, placement: str = "vram",
                 dmem: DmemRegion | None = None) -> None:
        self.kernel = kernel
        self.dmem = dmem  # the device's VRAM region in the dmem cgroup, if accounted
        self.size = (size + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1)
        self._placement = placement
        self._extents = kernel.phys.alloc(self.size, Owner(f"gpu:{placement}"))
        self._pin_count = 0
        self._moves = 0

    # The placement and the pin count: plain accesses, the resv lock guards them.
    placement = Plain[str](_PLACEMENT)
    extents = Plain[list[tuple[int, int]]](_PLACEMENT)
    moves = Plain[int](_PLACEMENT)
    pin_count = Plain[int](_PINS)

    def migrate(self, buf: DmaBuf, to: str) -> None:
        """Move the buffer to placement ``to`` ("vram" or "system")."""
        sched = self.kernel.sched
        profile = self.kernel.profile
        buf.resv.lock_ctx()
        try:
            if self.pin_count and not profile.has_bug(DMA_BUF_MOVE_PINNED):
                raise kerr(errno.EBUSY, f"migrate: {buf.name} is pinned")
            if self.pin_count:
                sched.violation("pinned-moved", f"{buf.name} moved while pinned "
                                f"({self.pin_count} pin(s))")
            # The new placement first, as TTM does: ttm_bo_validate -> ttm_bo_mem_space
            # allocates the new resource, and only then does ttm_bo_handle_move_mem notify the
            # importers and publish the copy's fence (ttm_bo_move_accel_cleanup, KERNEL
            # usage). An allocation failure then leaves nothing behind: no fence that would
            # never signal, no importer invalidated for a move that does not happen.
            new = self.kernel.phys.alloc(self.size, Owner(f"gpu:{to}"))
            fence = DmaFence(sched, f"{buf.name}.move{self.moves}")
            buf.resv.add_fence(fence, DMA_RESV_USAGE_KERNEL)
            try:
                core.dma_buf_move_notify(buf)
                if not profile.has_bug(DMA_BUF_MOVE_SKIPS_FENCE_WAIT):
                    for f in buf.resv.pending(DMA_RESV_USAGE_BOOKKEEP):
                        if f is not fence:
                            f.wait()
                self._copy(self.extents, new)
            except OSError as err:
                # A published fence must signal (dma-fence.c): on a later failure, the
                # kernel's dma_fence_set_error + dma_fence_signal; the new placement goes back.
                for s, e in new:
                    self.kernel.phys.release(s, e)
                fence.signal(-(err.errno or errno.EIO))
                raise
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
        phys = self.kernel.phys
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
                        phys.copy(s + (pos + off - acc), ns + off, take, "kernel")
                        off += take
                        break
                    acc += e - s
            pos += n


# ----- dma_buf_ops ---------------------------------------------------------------------------
def movable_pin(attach: DmaBufAttachment) -> None:
    """Pinning device memory charges the dmem cgroup (a pinned buffer cannot be evicted);
    over the limit the pin fails and nothing is charged or pinned."""
    exp: MovableExporter = attach.dmabuf.priv
    if exp.dmem is not None and exp.placement == "vram":
        exp.dmem.try_charge(exp.size, f"pin of {attach.dmabuf.name}")
    exp.pin_count += 1


def movable_unpin(attach: DmaBufAttachment) -> None:
    exp: MovableExporter = attach.dmabuf.priv
    exp.pin_count -= 1
    if exp.dmem is not None and exp.placement == "vram":
        exp.dmem.uncharge(exp.size)


def movable_map_dma_buf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    exp: MovableExporter = attach.dmabuf.priv
    return dma_direct(exp.extents)


def movable_unmap_dma_buf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    pass


def movable_release(buf: DmaBuf) -> None:
    exp: MovableExporter = buf.priv
    for s, e in exp.extents:
        exp.kernel.phys.release(s, e)
    exp.extents = []


MOVABLE_OPS = DmaBufOps(pin=movable_pin, unpin=movable_unpin,
                        map_dma_buf=movable_map_dma_buf, unmap_dma_buf=movable_unmap_dma_buf,
                        release=movable_release, memory_model=MOVABLE, exp_name="gpu-movable")


def movable_dmabuf(kernel: Kernel, size: int, placement: str = "vram",
                   dmem: DmemRegion | None = None) -> DmaBuf:
    exp = MovableExporter(kernel, size, placement, dmem)
    try:
        buf = core.dma_buf_export(kernel, MOVABLE_OPS, exp.size, priv=exp)
    except OSError:
        for s, e in exp._extents:  # the error path frees the VRAM (found by fail_nth)
            kernel.phys.release(s, e)
        raise
    exp.track_init(f"{buf.name}.placement")
    return buf
