"""The iommufd test mock's dma-buf (drivers/iommu/iommufd/selftest.c: struct
iommufd_test_dma_buf, iommufd_test_dmabuf_ops, iommufd_test_dma_buf_iommufd_map,
IOMMU_TEST_OP_DMABUF_GET and IOMMU_TEST_OP_DMABUF_REVOKE; 6.19, unchanged in 7.3 but for
DMABUF_GET's return value).

What it models: a buffer of ``length`` bytes (rounded up to a page; 0 or more than 512
pages EINVAL) backed by one physically contiguous kzalloc'd run, exported (exp_name
"iommufd", the module's KBUILD_MODNAME) with a static ops table that accepts every attachment
and refuses map_dma_buf (EOPNOTSUPP: iommufd reads the physical range through
:func:`iommufd_test_dma_buf_iommufd_map`, its private link, which says ENODEV while revoked).
DMABUF_GET installs the new fd (``open_flags`` are the file's flags and O_CLOEXEC) and
returns it — before 7.3; 7.3 (dba4254e216d, which fixed the leak of the buffer when
dma_buf_fd fails) returns 0 instead, the fd staying installed: profile
``iommufd_test_dmabuf_get_returns_fd``. Both ops exist with profile ``iommufd_map_dmabuf``
(6.19) only: EOPNOTSUPP before, as the switch's default. DMABUF_REVOKE on a buffer the mock
did not export is EOPNOTSUPP (a non-dma-buf fd EINVAL, a closed one EBADF); otherwise, under
the resv lock, it sets ``revoked`` to the argument and tells the importers both ways
(dma_buf_move_notify in 6.19, dma_buf_invalidate_mappings since the 7.1 revoke series; the
mock never waits for fences or unmaps, unlike vfio-pci's revoke). Un-revoking therefore
also revokes iommufd's pages of a buffer that was never revoked (iopt_revoke_notify does
not look at the exporter's flag); for pages already revoked it is a no-op. (An early version
of the revoke series made un-revoke call a dma_buf_mark_valid() instead; that did not land.)

Invariants: the memory is allocated once at GET and freed once by the release op (when
the last reference — fd or attachment — goes). Units: bytes.
Locking (sim/track.py): ``revoked`` (a Cell) under the buffer's resv lock; ``extents`` and
``length`` set before export, read-only afterwards.
Leaves out: kzalloc's size limit beyond the 512-page cap, virt_to_phys (the run's start is
the physical address).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....hw.physmem import Owner
from ....sim.track import Cell
from ....uapi import iommufd as I
from ...dma.phys_vec import phys_vec
from ...dma_buf import core
from ...dma_buf.core import REVOCABLE, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping
from ...mm.mm import PAGE
from .dmabuf import register_iommufd_map
from .main import Ucmd
from .selftest import test_op

if TYPE_CHECKING:
    from ...core import Kernel

MAX_PAGES = 512


class IommufdTestDmaBuf:
    """struct iommufd_test_dma_buf: the memory and the revoked flag."""

    def __init__(self, kernel: Kernel, length: int, extents: list[tuple[int, int]]) -> None:
        self.kernel = kernel
        self.length = length
        self.extents = extents
        self.revoked: Cell[bool] = Cell(False, label="iommufd_test_dma_buf.revoked")

    def free(self) -> None:
        for s, e in self.extents:
            self.kernel.phys.release(s, e)
        self.extents = []


def _attach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    pass


def _detach(buf: DmaBuf, attach: DmaBufAttachment) -> None:
    pass


def _map(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    raise kerr(errno.EOPNOTSUPP, "iommufd_test_dma_buf_map: the mock has no sg_table")


def _unmap(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    pass


def _release(buf: DmaBuf) -> None:
    buf.priv.free()


IOMMUFD_TEST_DMABUF_OPS = DmaBufOps(attach=_attach, detach=_detach, map_dma_buf=_map,
                                    unmap_dma_buf=_unmap, release=_release,
                                    memory_model=REVOCABLE, can_unrevoke=True,
                                    exp_name="iommufd")


def iommufd_test_dma_buf_iommufd_map(attach: DmaBufAttachment) -> phys_vec:
    """The mock's side of the private link (resv held): ENODEV while revoked."""
    buf = attach.dmabuf
    buf.resv.assert_held("iommufd_test_dma_buf_iommufd_map")
    priv: IommufdTestDmaBuf = buf.priv
    if priv.revoked.get():
        raise kerr(errno.ENODEV, f"iommufd_test_dma_buf_iommufd_map: {buf.name} is revoked")
    ((s, _),) = priv.extents
    return phys_vec(s, priv.length)


register_iommufd_map(IOMMUFD_TEST_DMABUF_OPS, iommufd_test_dma_buf_iommufd_map)


def _need_dmabuf(ucmd: Ucmd) -> None:
    """Both ops came with iommufd's dma-buf import (6.19): before it, the switch's
    default."""
    if not ucmd.ictx.kernel.profile.iommufd_map_dmabuf:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_TEST_CMD: unknown op {ucmd.cmd.op} (the mock's "
                   "dma-buf ops came with 6.19)")


@test_op(I.IOMMU_TEST_OP_DMABUF_GET)
def iommufd_test_dmabuf_get(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_DMABUF_GET: a new mock dma-buf in a new fd; returns the fd (0 in
    7.3)."""
    kernel = ucmd.ictx.kernel
    _need_dmabuf(ucmd)
    open_flags = ucmd.cmd.dmabuf_get.open_flags
    length = -(-ucmd.cmd.dmabuf_get.length // PAGE) * PAGE
    if length == 0 or length > PAGE * MAX_PAGES:
        raise kerr(errno.EINVAL, f"IOMMU_TEST_OP_DMABUF_GET: length {length:#x} is 0 or "
                   f"above {MAX_PAGES} pages")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "iommufd_test_dmabuf_get: kzalloc of priv failed (injected)")
    extents = kernel.phys.alloc(length, Owner("iommufd_test_dmabuf"))
    if len(extents) != 1:  # kzalloc is physically contiguous
        for s, e in extents:
            kernel.phys.release(s, e)
        raise kerr(errno.ENOMEM, f"iommufd_test_dmabuf_get: no contiguous {length:#x} bytes")
    priv = IommufdTestDmaBuf(kernel, length, extents)
    try:
        buf = core.dma_buf_export(kernel, IOMMUFD_TEST_DMABUF_OPS, length, priv,
                                  flags=open_flags)
    except OSError:
        priv.free()
        raise
    try:
        fd = core.dma_buf_fd(ucmd.proc, buf, open_flags)
    except OSError:
        core.dma_buf_put(buf)
        raise
    return fd if kernel.profile.iommufd_test_dmabuf_get_returns_fd else 0


@test_op(I.IOMMU_TEST_OP_DMABUF_REVOKE)
def iommufd_test_dmabuf_revoke(ucmd: Ucmd) -> int:
    """IOMMU_TEST_OP_DMABUF_REVOKE: set ``revoked`` (non-zero revokes, zero un-revokes) and
    invalidate every importer's mappings, either way, under the resv lock."""
    _need_dmabuf(ucmd)
    args = ucmd.cmd.dmabuf_revoke
    buf = core.dma_buf_get(ucmd.proc, args.dmabuf_fd)
    try:
        if buf.ops is not IOMMUFD_TEST_DMABUF_OPS:
            raise kerr(errno.EOPNOTSUPP, f"IOMMU_TEST_OP_DMABUF_REVOKE: {buf.name} is a "
                       f"{buf.exp_name} dma-buf, not the mock's")
        priv: IommufdTestDmaBuf = buf.priv
        buf.resv.lock_ctx()
        try:
            priv.revoked.set(bool(args.revoked))
            core.dma_buf_invalidate_mappings(buf)  # dma_buf_move_notify before 7.1
        finally:
            buf.resv.unlock()
    finally:
        core.dma_buf_put(buf)
    return 0

