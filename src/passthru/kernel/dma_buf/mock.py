"""A revocable exporter like the iommufd selftest's mock dma-buf (drivers/iommu/iommufd/
selftest.c: IOMMU_TEST_OP_DMABUF_GET / DMABUF_REVOKE) and, in its rules, like vfio-pci's
(drivers/vfio/pci/vfio_pci_dmabuf.c): RAM-backed, revocable with un-revoke.

Rules, by profile:
- attach refuses importers without peer2peer (EOPNOTSUPP) and while revoked (ENODEV);
- 7.1 (``dma_buf_attach_revocable``): also importers that are not revocable (EOPNOTSUPP);
- 6.19 (``revocable_pin_refused``): a pin op that returns EOPNOTSUPP, so pinned (static)
  importers fail at map time instead;
- map while revoked: ENODEV.
``revoke()`` runs the core's revoke contract; ``reclaim()`` gives the memory back (after which
any importer access is a physical-truth violation); ``unrevoke()`` lets importers map again.

Accesses (sim/track.py): the revoke state, ``<buf>.revoked`` (vfio's ``priv->revoked``), is
written under the resv lock (revoke, unrevoke) and read under it by map (plain); attach reads
it without the lock, as vfio_pci_dma_buf_attach does — a marked read here, where the kernel's
is a plain one KCSAN could report (benign: the map checks again under the lock). The reclaim
state is the exporter's own (the revoking task, then the release), plain.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...hw.physmem import Owner
from ...sim import track
from ...uapi import linux as L
from . import core
from .core import REVOCABLE, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping

if TYPE_CHECKING:
    from ..core import Kernel


_REVOKED = (0, 1)
_RECLAIMED = (1, 2)


class MockRevocableExporter(DmaBufOps, track.Tracked):
    memory_model = REVOCABLE
    can_unrevoke = True
    exp_name = "mock-revocable"
    mapping_types = ("pal", "sgt")

    def __init__(self, kernel: Kernel, size: int, require_p2p: bool = True) -> None:
        self.kernel = kernel
        self.size = (size + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1)
        self.require_p2p = require_p2p
        self.extents = kernel.phys.alloc(self.size, Owner("dmabuf:mock"))
        self.revoked = False
        self.reclaimed = False
        self.buf_name = ""  # set at export: names the memory for scheduling points
        if kernel.profile.revocable_pin_refused:
            self.pin = self._pin_refused
            self.unpin = self._unpin

    # ----- ops ---------------------------------------------------------------------------
    def attach(self, buf: DmaBuf, attach: DmaBufAttachment) -> None:
        if self.require_p2p and not attach.peer2peer:
            raise kerr(errno.EOPNOTSUPP, f"attach: {self.exp_name} needs a peer2peer importer")
        track.read_once(self, *_REVOKED)  # no resv lock here (dma_buf_dynamic_attach)
        if self.revoked:
            raise kerr(errno.ENODEV, f"attach: {buf.name} is revoked")
        if self.kernel.profile.dma_buf_attach_revocable and not \
                core.dma_buf_attach_revocable(attach):
            raise kerr(errno.EOPNOTSUPP, f"attach: {buf.name} may be revoked and the importer "
                       "has no invalidate_mappings (dma_buf_attach_revocable)")

    def _pin_refused(self, attach: DmaBufAttachment) -> None:
        raise kerr(errno.EOPNOTSUPP, f"pin: {self.exp_name} buffers cannot be pinned")

    def _unpin(self, attach: DmaBufAttachment) -> None:
        pass

    def map_dma_buf(self, attach: DmaBufAttachment, direction: int) -> DmaMapping:
        track.read(self, *_REVOKED)  # resv held (the core asserted it)
        if self.revoked:
            raise kerr(errno.ENODEV, f"map: {attach.dmabuf.name} is revoked")
        # dma-direct (no IOMMU yet): the DMA address is the physical address.
        return DmaMapping([(s, e - s, s) for s, e in self.extents])

    def unmap_dma_buf(self, attach: DmaBufAttachment, mapping: DmaMapping, d: int) -> None:
        pass

    def release(self, buf: DmaBuf) -> None:
        self.reclaim()

    # ----- exporter-side events ----------------------------------------------------------
    def revoke(self, buf: DmaBuf) -> None:
        def mark() -> None:  # core.revoke calls it with the resv lock held
            track.write(self, *_REVOKED)
            self.revoked = True

        core.revoke(buf, mark)

    def unrevoke(self, buf: DmaBuf) -> None:
        buf.resv.lock_ctx()
        try:
            track.write(self, *_REVOKED)
            self.revoked = False
        finally:
            buf.resv.unlock()

    def reclaim(self) -> None:
        track.read(self, *_RECLAIMED)
        if not self.reclaimed:
            if self.buf_name:
                self.kernel.sched.point(f"{self.buf_name}.mem", "w")
            track.write(self, *_RECLAIMED)
            self.reclaimed = True
            for s, e in self.extents:
                self.kernel.phys.release(s, e)


def mock_dmabuf(kernel: Kernel, size: int, **kw: Any) -> DmaBuf:
    exp = MockRevocableExporter(kernel, size, **kw)
    try:
        buf = core.dma_buf_export(kernel, exp, exp.size, priv=exp)
    except OSError:
        exp.reclaim()  # the error path gives the memory back (found by the fail_nth sweep)
        raise
    exp.buf_name = buf.name
    exp.track_init(f"{buf.name}.revoked")
    return buf
