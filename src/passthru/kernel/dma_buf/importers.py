"""Importers: who maps a dma-buf and what they tolerate (the seeds' cases; KERNEL.md §1).

- :class:`DeviceImporter` — a generic device driver, static (no importer ops: pin-on-map) or
  dynamic, reacting to invalidation by ``unmap``: "sync" (unmap at once, under the resv
  lock), "work" (queue a work item that unmaps from its own task, as RDMA ODP does), or
  "never" (a broken importer: the 7.1 exporter's 1 s wait catches it);
- :class:`QuiescingImporter` — a device that DMAs through its mapping without fences and
  drains that DMA inside its invalidate callback before unmapping (``drain=False``: returns
  with the DMA still in flight — a contract violation);
- :class:`RdmaMrImporter` — an RDMA memory region: ``pinned`` (ib_umem_dmabuf_get_pinned:
  dynamic attach, then dma_buf_pin; tolerates pinned and movable, not revocable) or ``odp``
  (on-demand paging: dynamic, re-faults after invalidation);
- :class:`CompositorImporter` — a display server's GPU importing client buffers; it refuses
  revocable buffers, since a client could shoot down the compositor's context (the seeds'
  argument; the refusal is a proposal, EOPNOTSUPP);
- :func:`kvm_legacy_map` — the pre-dma-buf KVM route: mmap the buffer, then GUP it, which
  fails with EFAULT on the special PTEs of heap/vfio mappings (mm/gup.c) — "refused, as
  designed" (the pKVM/crosvm report).

Drivers (drivers/infiniband/core/umem_dmabuf.c, drivers/gpu/drm/drm_prime.c, amdgpu/xe) are
reduced to the attach/map/invalidate protocol and their device's DMA.

Ops and state, as the kernel separates them: every importer attaches with a static
:class:`~.core.DmaBufAttachOps` table (:func:`importer_ops`: one frozen table per
configuration — peer2peer, tolerated memory models, whether it has move_notify — shared by
every importer with it) whose ``invalidate`` is :func:`importer_move_notify`; the driver's
state is the importer object, passed as ``importer_priv`` and found again in
``attach.importer_priv``, as amdgpu finds its bo.

Invariants: an importer unmaps what it was told to drop — at once ("sync", or in the callback
after draining), from its work item ("work"), or never (the broken one the exporter's wait
catches); a fenced job's fence signals after its DMA; a pinned RDMA MR is never invalidated
(``rdma-pinned-moved``). Units: bytes (offsets into the buffer).

Which lock protects which field (sim/track.py):
- ``needs_unmap``, ``invalidations`` (location ``<dev>.importer``) and the compositor's
  ``context_lost``: the buffer's resv lock — the invalidate callback runs with it held
  (dma_buf_invalidate_mappings asserts it) and every driver path takes it around them
  (ib_umem_dmabuf_map_pages, amdgpu_dma_buf_move_notify); plain accesses;
- the attachment's mapping state: the resv lock (core.py);
- ``QuiescingImporter.inflight`` (``<dev>.inflight``): an atomic_t, an atomic cell;
- ``dev``, ``dynamic``, ``unmap``, ``uses_fences``, ``ops``, ``attach_``, ``mode``: set by
  the driver before (or while) it attaches, read-only while tasks run.
A job hands the device the mapping it captured under the lock; the device's DMA is hardware
(core.dma_access).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from ...sim import kinds, track
from ...sim.fields import Plain
from ...sim.locks import WaitQueue
from ...sim.track import Cell
from ...uapi import linux as L
from ..mm.gup import pin_user_pages
from . import core
from .core import (
    MEMORY_MODELS,
    MOVABLE,
    PINNED,
    REVOCABLE,
    DmaBuf,
    DmaBufAttachment,
    DmaBufAttachOps,
    DmaMapping,
)
from .fence import DmaFence
from .resv import DMA_RESV_USAGE_WRITE

if TYPE_CHECKING:
    from ..fs.process import Process

# The violations this file reports (sim/kinds.py).
kinds.register("rdma-pinned-moved", "dma-buf")
kinds.register("compositor-shot-down", "dma-buf")


def importer_move_notify(attach: DmaBufAttachment) -> None:
    """The importers' move_notify / invalidate_mappings (resv held): the driver's state is
    ``attach.importer_priv``."""
    imp: DeviceImporter = attach.importer_priv
    imp.move_notify(attach)


@cache
def importer_ops(allow_peer2peer: bool, tolerates: frozenset[str],
                 has_move_notify: bool = True) -> DmaBufAttachOps:
    """The static dma_buf_attach_ops of one importer configuration (one shared frozen table
    per distinct argument tuple). ``has_move_notify`` False: ops without the callback, which
    attach refuses before 7.1 (EINVAL) and 7.1 allows for non-revocable buffers."""
    return DmaBufAttachOps(invalidate=importer_move_notify if has_move_notify else None,
                           allow_peer2peer=allow_peer2peer, tolerates=tolerates)


class DeviceImporter(track.Tracked):
    """A device driver importing one dma-buf. ``dynamic`` False: a static importer (no ops:
    pin on map); ``has_move_notify`` False: importer ops without the callback."""

    def __init__(self, dev: str, dynamic: bool = True, unmap: str = "sync",
                 p2p: bool = True, tolerates: frozenset[str] = frozenset(MEMORY_MODELS),
                 uses_fences: bool = True, has_move_notify: bool = True) -> None:
        assert unmap in ("sync", "work", "never")
        self.dev = dev
        self.dynamic = dynamic
        self.unmap = unmap
        self.uses_fences = uses_fences
        self.ops = importer_ops(p2p, tolerates, has_move_notify) if dynamic else None
        self.attach_: DmaBufAttachment | None = None
        self._invalidations = 0
        self._needs_unmap = False
        self.track_init(f"{dev}.importer")

    # The importer's own invalidation state: plain, under the buffer's resv lock.
    needs_unmap = Plain[bool]()
    invalidations = Plain[int]()

    def move_notify(self, attach: DmaBufAttachment) -> None:
        """The driver's reaction to invalidation (resv held): unmap now, or later."""
        self.invalidations += 1
        if attach.mapping is None:
            return
        if self.unmap == "sync":
            core.dma_buf_unmap_attachment(attach)  # resv is held by the caller
            return
        self.needs_unmap = True
        if self.unmap == "work":
            attach.dmabuf.sched.spawn(f"{self.dev}.work", self.unmap_if_invalidated)

    # driver paths
    def attach(self, buf: DmaBuf) -> DmaBufAttachment:
        self.attach_ = core.dma_buf_dynamic_attach(buf, self.dev, self.ops, self)
        return self.attach_

    def map(self) -> DmaMapping:
        """Map (if not mapped) under the resv lock; the mapping, as captured under it."""
        a = self._a()
        a.dmabuf.resv.lock_ctx()
        try:
            m = a.mapping
            if m is None:
                m = core.dma_buf_map_attachment(a)
            return m
        finally:
            a.dmabuf.resv.unlock()

    def _may_unmap(self) -> bool:
        """Whether the lazy unmap is due (resv held)."""
        self._a().dmabuf.resv.assert_held("the importer's lazy unmap")
        return self.needs_unmap

    def unmap_if_invalidated(self) -> None:
        """The lazy importer's worker: unmap what was invalidated (checked under the lock)."""
        a = self._a()
        a.dmabuf.resv.lock_ctx()
        try:
            if self._may_unmap():
                if a.mapping is not None:
                    core.dma_buf_unmap_attachment(a)
                self.needs_unmap = False
        finally:
            a.dmabuf.resv.unlock()

    def dma_write(self, offset: int, data: bytes) -> None:
        """A DMA job: publish a fence (if this driver does), then write, then signal."""
        a = self._a()
        if not self.uses_fences:
            # A driver that maps, drops the lock and programs the device with the addresses,
            # with no fence: nothing tells the exporter the memory is still in use.
            programmed = self.map()
            a.dma_access(offset, len(data), True, data, job=programmed)
            return
        a.dmabuf.resv.lock_ctx()
        try:
            if a.mapping is None and not self.needs_unmap:
                core.dma_buf_map_attachment(a)
            job = a.mapping
            fence = DmaFence(a.dmabuf.sched, f"{self.dev}.job")
            a.dmabuf.resv.add_fence(fence, DMA_RESV_USAGE_WRITE)
        finally:
            a.dmabuf.resv.unlock()
        a.dma_access(offset, len(data), True, data, job=job)
        fence.signal()

    def dma_read(self, offset: int, n: int) -> bytes:
        """A synchronous device read: the driver holds the resv lock around it, so its own
        unmap (and a revoking exporter's step 1) cannot overlap; an unmapped buffer is mapped
        again first, which fails (ENODEV) once revoked."""
        a = self._a()
        a.dmabuf.resv.lock_ctx()
        try:
            if a.mapping is None:
                core.dma_buf_map_attachment(a)
            return a.dma_access(offset, n, False)
        finally:
            a.dmabuf.resv.unlock()

    def teardown(self) -> None:
        """The driver lets go: drop what it holds under the resv lock, then detach."""
        a = self.attach_
        if a is None or a.detached:
            return
        a.dmabuf.resv.lock_ctx()
        try:
            self._drop(a)
        finally:
            a.dmabuf.resv.unlock()
        core.dma_buf_detach(a.dmabuf, a)

    def _drop(self, a: DmaBufAttachment) -> None:
        """What teardown undoes with the resv lock held: the mapping."""
        if a.mapping is not None:
            core.dma_buf_unmap_attachment(a)

    def _a(self) -> DmaBufAttachment:
        assert self.attach_ is not None, "attach first"
        return self.attach_


class QuiescingImporter(DeviceImporter):
    """A dynamic importer whose device DMAs through its live mapping without publishing a
    fence — the driver counts the jobs it has in flight itself — and whose invalidate callback
    *quiesces*: it waits for the DMA in flight to finish and unmaps, all before returning.

    That is correct under the revoke/move contract (KERNEL.md §1): the callback runs with the
    resv lock held and may finish or drain in-flight work; the mapping counts as invalid only
    once the callback has returned. New jobs start under the resv lock (the same lock the
    callback runs under), so none can start while it drains. ``drain=False`` is the broken
    variant: the callback returns while a job is still in flight, and the job unmaps when it
    finishes — after invalidation, so its remaining writes break the contract.
    """

    def __init__(self, dev: str = "quiesce-dev", drain: bool = True) -> None:
        super().__init__(dev, dynamic=True, unmap="sync", uses_fences=False)
        self.drain = drain
        self.inflight: Cell[int] = Cell(0, label=f"{dev}.inflight", atomic=True)  # atomic_t
        self._idle_wq: WaitQueue | None = None

    def attach(self, buf: DmaBuf) -> DmaBufAttachment:
        # Made at attach, not on first use: a location is named by the task creating it.
        self._idle_wq = WaitQueue(buf.sched, f"{self.dev}.idle")
        return super().attach(buf)

    def _idle(self, buf: DmaBuf) -> WaitQueue:
        if self._idle_wq is None:
            self._idle_wq = WaitQueue(buf.sched, f"{self.dev}.idle")
        return self._idle_wq

    def move_notify(self, attach: DmaBufAttachment) -> None:
        self.invalidations += 1
        if attach.mapping is None:
            return
        if self.drain:
            # Quiesce: wait for every job in flight, then drop the mapping (resv is held).
            self._idle(attach.dmabuf).wait_event(lambda: self.inflight.get() == 0)
            core.dma_buf_unmap_attachment(attach)
        elif self.inflight.get():
            self.needs_unmap = True  # broken: the job unmaps when it is done
        else:
            core.dma_buf_unmap_attachment(attach)

    def _may_unmap(self) -> bool:
        return super()._may_unmap() and not self.inflight.get()

    def dma_burst(self, offset: int, chunks: list[bytes]) -> None:
        """One DMA job writing ``chunks`` back to back through the live mapping (no fence).
        Mapping again once revoked fails (ENODEV), as designed."""
        a = self._a()
        buf = a.dmabuf
        buf.resv.lock_ctx()
        try:
            if a.mapping is None:
                core.dma_buf_map_attachment(a)
            # atomic_inc under resv: an invalidation cannot be half-way through
            self.inflight.set(self.inflight.get() + 1)
        finally:
            buf.resv.unlock()
        try:
            pos = offset
            for c in chunks:
                a.dma_access(pos, len(c), True, c)  # through the live mapping
                pos += len(c)
        finally:
            self.inflight.set(self.inflight.get() - 1)  # atomic_dec
            self._idle(buf).wake_up()
        self.unmap_if_invalidated()  # the job's completion: a deferred unmap, if one is due


class RdmaMrImporter(DeviceImporter):
    """An RDMA MR over a dma-buf: ``mode`` "pinned" or "odp"."""

    def __init__(self, dev: str = "mlx5", mode: str = "pinned") -> None:
        super().__init__(dev, dynamic=True, p2p=True, tolerates=frozenset({PINNED, MOVABLE}),
                         unmap="work" if mode == "odp" else "sync")
        self.mode = mode

    def move_notify(self, attach: DmaBufAttachment) -> None:
        if self.mode == "pinned":
            # ib_umem_dmabuf_unsupported_move_notify: a pinned MR must never be moved.
            attach.dmabuf.sched.violation(
                "rdma-pinned-moved", f"{self.dev}: move_notify on a pinned MR")
            return
        super().move_notify(attach)

    def register(self, buf: DmaBuf) -> None:
        """ibv_reg_dmabuf_mr: attach, pin (pinned mode), map."""
        a = self.attach(buf)
        buf.resv.lock_ctx()
        try:
            if self.mode == "pinned":
                core.dma_buf_pin(a)
            try:
                core.dma_buf_map_attachment(a)
            except OSError:
                if self.mode == "pinned":
                    core.dma_buf_unpin(a)
                raise
        finally:
            buf.resv.unlock()

    def _drop(self, a: DmaBufAttachment) -> None:
        """ib_umem_dmabuf_release: unmap, then unpin (a pinned MR)."""
        super()._drop(a)
        while a.pins:
            core.dma_buf_unpin(a)


class CompositorImporter(DeviceImporter):
    """A compositor's GPU; ``accepts_revocable`` models a compositor that does not refuse."""

    def __init__(self, dev: str = "compositor-gpu", accepts_revocable: bool = False) -> None:
        tol = frozenset(MEMORY_MODELS) if accepts_revocable else frozenset({PINNED, MOVABLE})
        super().__init__(dev, dynamic=True, p2p=True, tolerates=tol)
        self._context_lost = False

    context_lost = Plain[bool]()  # resv held: written by the callback

    def move_notify(self, attach: DmaBufAttachment) -> None:
        if attach.dmabuf.ops.memory_model == REVOCABLE:
            # A revoked client buffer under scan-out/composition: the GPU context faults.
            self.context_lost = True
            attach.dmabuf.sched.violation(
                "compositor-shot-down", f"{self.dev}: a client revoked {attach.dmabuf.name} "
                "while the compositor used it; its GPU context is lost")
        super().move_notify(attach)


def kvm_legacy_map(proc: Process, fd: int, length: int) -> int:
    """The legacy KVM path: mmap the dma-buf, then pin_user_pages it (as KVM's hva_to_pfn
    would for a long-term pin). Returns the address; raises EFAULT on special PTEs."""
    addr = proc.mmap(0, length, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, fd, 0)
    try:
        pin = pin_user_pages(proc.mm, addr, length, write=True)
    except OSError:
        proc.munmap(addr, length)
        raise
    pin.unpin()
    return addr
