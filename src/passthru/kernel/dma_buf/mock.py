"""A revocable exporter like the iommufd selftest's mock dma-buf (drivers/iommu/iommufd/
selftest.c: IOMMU_TEST_OP_DMABUF_GET / DMABUF_REVOKE) and, in its rules, like vfio-pci's
(drivers/vfio/pci/vfio_pci_dmabuf.c): RAM-backed, revocable with un-revoke.

Rules, by profile:
- attach refuses importers without peer2peer (EOPNOTSUPP) and while revoked (ENODEV);
- 7.1 (``dma_buf_attach_revocable``): also importers that are not revocable (EOPNOTSUPP);
- 6.19 (``revocable_pin_refused``): a pin op that returns EOPNOTSUPP, so pinned (static)
  importers fail at map time instead — a second static table, :data:`MOCK_OPS_PIN_REFUSED`,
  chosen at export as vfio's ops are chosen at build time;
- map while revoked: ENODEV.
:meth:`MockRevocableExporter.revoke` runs the core's revoke contract; ``reclaim()`` gives the
memory back (after which any importer access is a physical-truth violation); ``unrevoke()``
lets importers map again.

The ops are the static :data:`MOCK_OPS`; the exporter's state (``struct vfio_pci_dma_buf``'s
part that matters here) is the :class:`MockRevocableExporter` in ``dmabuf.priv``.

Invariants: a revoked buffer is never mapped again until un-revoked; the memory is released
exactly once (``reclaimed``), by reclaim or by the release op, whichever comes first.
Units: bytes (``size`` is page aligned), physical byte addresses (``extents``: (start, end)).

Which lock protects which field (sim/track.py):
- ``revoked`` (location ``<buf>.revoked``, vfio's ``priv->revoked``): the resv lock for
  writes — revoke's mark (the core calls it with the lock held) and unrevoke assert it — and
  for map's read (dma_buf_map_attachment asserted it before calling the op); attach reads it
  without the lock, as vfio_pci_dma_buf_attach does: a marked read here, where the kernel's
  is a plain one KCSAN could report (benign: the map checks again under the lock);
- ``reclaimed``: the exporter's own (the revoking task, then the release), plain, no lock;
- ``kernel``, ``size``, ``require_p2p``, ``extents``, ``buf_name``: set before the buffer is
  shared, read-only afterwards.
"""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import TYPE_CHECKING

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


class MockRevocableExporter(track.Tracked):
    """The exporter's private data (``dmabuf.priv``) and its exporter-side events."""

    def __init__(self, kernel: Kernel, size: int, require_p2p: bool = True) -> None:
        self.kernel = kernel
        self.size = (size + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1)
        self.require_p2p = require_p2p
        self.extents = kernel.phys.alloc(self.size, Owner("dmabuf:mock"))
        self.revoked = False
        self.reclaimed = False
        self.buf_name = ""  # set at export: names the memory for scheduling points

    def _set_revoked(self, buf: DmaBuf, revoked: bool, what: str) -> None:
        buf.resv.assert_held(what)
        track.write(self, *_REVOKED)
        self.revoked = revoked

    # ----- exporter-side events ----------------------------------------------------------
    def revoke(self, buf: DmaBuf) -> None:
        """vfio_pci_dma_buf_move(revoked=true): the core's revoke contract."""
        core.revoke(buf, lambda: self._set_revoked(buf, True, "vfio_pci_dma_buf_move"))

    def unrevoke(self, buf: DmaBuf) -> None:
        """vfio_pci_dma_buf_move(revoked=false): importers may map again."""
        buf.resv.lock_ctx()
        try:
            self._set_revoked(buf, False, "vfio_pci_dma_buf_move")
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


# ----- dma_buf_ops ---------------------------------------------------------------------------
def mock_attach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    exp: MockRevocableExporter = buf.priv
    if exp.require_p2p and not attach.peer2peer:
        raise kerr(errno.EOPNOTSUPP, f"attach: {buf.exp_name} needs a peer2peer importer")
    track.read_once(exp, *_REVOKED)  # no resv lock here (dma_buf_dynamic_attach)
    if exp.revoked:
        raise kerr(errno.ENODEV, f"attach: {buf.name} is revoked")
    if exp.kernel.profile.dma_buf_attach_revocable and not \
            core.dma_buf_attach_revocable(attach):
        raise kerr(errno.EOPNOTSUPP, f"attach: {buf.name} may be revoked and the importer "
                   "has no invalidate_mappings (dma_buf_attach_revocable)")


def mock_pin_refused(attach: DmaBufAttachment) -> None:
    raise kerr(errno.EOPNOTSUPP, f"pin: {attach.dmabuf.exp_name} buffers cannot be pinned")


def mock_unpin(attach: DmaBufAttachment) -> None:
    pass


def mock_map_dma_buf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    exp: MockRevocableExporter = attach.dmabuf.priv
    track.read(exp, *_REVOKED)  # resv held (the core asserted it)
    if exp.revoked:
        raise kerr(errno.ENODEV, f"map: {attach.dmabuf.name} is revoked")
    return core.dma_direct(exp.extents)


def mock_unmap_dma_buf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    pass


def mock_release(buf: DmaBuf) -> None:
    buf.priv.reclaim()


MOCK_OPS = DmaBufOps(attach=mock_attach, map_dma_buf=mock_map_dma_buf,
                     unmap_dma_buf=mock_unmap_dma_buf, release=mock_release,
                     memory_model=REVOCABLE, can_unrevoke=True, exp_name="mock-revocable",
                     mapping_types=("pal", "sgt"))
MOCK_OPS_PIN_REFUSED = replace(MOCK_OPS, pin=mock_pin_refused, unpin=mock_unpin)


def mock_dmabuf(kernel: Kernel, size: int, require_p2p: bool = True) -> DmaBuf:
    exp = MockRevocableExporter(kernel, size, require_p2p)
    ops = MOCK_OPS_PIN_REFUSED if kernel.profile.revocable_pin_refused else MOCK_OPS
    try:
        buf = core.dma_buf_export(kernel, ops, exp.size, priv=exp)
    except OSError:
        exp.reclaim()  # the error path gives the memory back (found by the fail_nth sweep)
        raise
    exp.buf_name = buf.name
    exp.track_init(f"{buf.name}.revoked")
    return buf
