"""IOAS_MAP_FILE of a dma-buf: iommufd as a revocable dynamic importer
(drivers/iommu/iommufd/pages.c iopt_alloc_dmabuf_pages, iopt_map_dmabuf, iopt_revoke_notify,
iopt_dmabuf_track_domain/untrack_domain; io_pagetable.h struct iopt_pages_dmabuf; 6.19).

What it models: IOMMU_IOAS_MAP_FILE given a dma-buf fd makes an :class:`IoptPages` of kind
``dmabuf`` whose ``.dmabuf`` is an :class:`IoptDmabuf` — the attachment, the buffer's one
physical range and the tracker of the (area, domain) pairs it is mapped into. In the kernel's
order:

1. ``start + length - 1`` at or past the buffer's size, length 0, or ``length / PAGE_SIZE``
   past the batch's u32 count: EINVAL (before anything is allocated);
2. kzalloc of the pages (fault point), no pinned-page accounting (ACCOUNT_NONE);
3. dma_buf_dynamic_attach with ``allow_peer2peer`` and ``invalidate_mappings`` =
   :func:`iopt_revoke_notify` (the exporter's attach op may refuse: its errno, e.g. ENODEV
   for a revoked vfio buffer);
4. under the buffer's resv lock: (7.1, the revoke series) dma_buf_pin; then the private
   vfio link (sym_vfio_pci_dma_buf_iommufd_map): the exporter must be vfio-pci's or the test
   mock's — any other EOPNOTSUPP; revoked ENODEV; more than one range EOPNOTSUPP;
5. any failure unpins, unlocks, detaches and frees the pages.
Because all of this runs before iopt_map_pages (ioas.py), a revoked buffer mapped over a used
IOVA gets ENODEV, not EEXIST.

The pages are mapped into every domain as MMIO (io_pagetable.py ORs IOMMU_MMIO for kind
``dmabuf``) from :meth:`IoptDmabuf.pfns`. On revoke the exporter calls
:func:`iopt_revoke_notify` with the resv lock held; it takes the pages mutex (lock order
resv → pages->mutex) and unmaps every tracked (area, domain) pair, then marks the pages
revoked (``phys.len = 0``). Revocation is final for these pages: un-revoking the buffer does
not remap, and a fill after it (a new domain) maps nothing — ``pfns`` is empty — so DMA
through the IOVA faults in hw until userspace unmaps and maps again (a new attachment).
The areas stay (UNMAP removes them as usual).

Exporters: :func:`register_iommufd_map` names an exporter's ops table and its
vfio_pci_dma_buf_iommufd_map-like function. vfio-pci's own buffers register from
kernel/vfio/pci/dmabuf.py and the iommufd test mock's from selftest_dmabuf.py, as in the
kernel. Two model extras are registered here for scenarios and tests written before vfio-pci
existed: kernel/dma_buf/mock.py's revocable exporter (vfio-pci's rules) and p2p_exporter.py's
BAR exporter (its phys_vec shape); the kernel would refuse both with EOPNOTSUPP
(docs/fidelity.md).

Invariants: a dma-buf pages object has exactly one attachment from creation to its last
put; ``phys`` is set once under the resv lock and only ever cleared afterwards (revoke);
every tracked pair is untracked before the pages are freed; no pinned-page charge.
Units: bytes; ``phys`` is (physical address, length) of the whole buffer; ``pfns`` offsets
are bytes from the pages' first page (``pages.base`` bytes into the buffer).
Locking (sim/track.py): ``phys`` (a Cell) is written under the resv lock at map time and
under resv + ``pages.mutex`` at revoke, read under ``pages.mutex`` (the fill path) or resv;
``tracker`` under ``pages.mutex`` (asserted); ``attach``, ``buf``, ``pinned`` are set before
the pages are published and read-only afterwards.
Leaves out: the lockdep class split of the dmabuf pages mutex (the model's lock classes are
per name), symbol_get of vfio's function (a registry here), iommufd_access of dma-buf pages
(EINVAL in the kernel; accesses are not built here), the batch/xarray pfn reader.
The tracker: io_pagetable.py's fill and unmap paths call track_domain/untrack_domain for
every (area, domain) pair under pages->mutex, so a revoke finds every domain the buffer is
mapped into, in every IOAS (IOAS_COPY included), without the iopt locks (which would invert
resv → pages->mutex).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....sim import track
from ....sim.track import Cell, TrackedList
from ...dma.phys_vec import phys_vec
from ...dma_buf import core
from ...dma_buf.core import DmaBuf, DmaBufAttachment, DmaBufAttachOps, DmaBufOps
from ...dma_buf.mock import _REVOKED, MOCK_OPS, MOCK_OPS_PIN_REFUSED, MockRevocableExporter
from ...dma_buf.p2p_exporter import BAR_OPS, BarExporter
from ...lockdep_assert import lockdep_assert_held
from ...mm.mm import PAGE
from ...profile import IOMMUFD_DMABUF_MAP_LOCK_INVERSION, IOMMUFD_REVOKE_SKIPS_UNMAP
from .pages import IoptPages

if TYPE_CHECKING:
    from ...fs.file import File
    from .main import Ucmd

#: iommufd_global_device(): the /dev/iommu misc device every dma-buf attachment names.
IOMMUFD_DEV = "iommufd"
#: MAX_NPFNS: type_max of pfn_batch's npfns entries (u32).
MAX_NPFNS = (1 << 32) - 1

IommufdMap = Callable[[DmaBufAttachment], phys_vec]
_IOMMUFD_MAP: list[tuple[DmaBufOps, IommufdMap]] = []


def register_iommufd_map(ops: DmaBufOps, fn: IommufdMap) -> None:
    """Let iommufd import buffers exported with ``ops`` (compared by identity): ``fn`` gives
    the buffer's single physical range, resv held, or raises (ENODEV revoked, EOPNOTSUPP
    several ranges)."""
    _IOMMUFD_MAP.append((ops, fn))


def is_dma_buf_file(f: File) -> bool:
    """is_dma_buf_file."""
    return isinstance(f, DmaBuf)


def sym_vfio_pci_dma_buf_iommufd_map(attach: DmaBufAttachment) -> phys_vec:
    """The private link (symbol_get of vfio_pci_dma_buf_iommufd_map): the function registered
    for the buffer's ops — vfio-pci's, the test mock's, or a model extra; any other buffer is
    EOPNOTSUPP."""
    buf = attach.dmabuf
    buf.resv.assert_held("vfio_pci_dma_buf_iommufd_map")
    fn = next((f for ops, f in _IOMMUFD_MAP if ops is buf.ops), None)
    if fn is None:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_IOAS_MAP_FILE: {buf.name} is a {buf.exp_name} "
                   "dma-buf; iommufd imports only vfio-pci's and the test mock's")
    return fn(attach)


class IoptDmabuf(track.Tracked):
    """struct iopt_pages_dmabuf (and the importer_priv of its attachment)."""

    def __init__(self, pages: IoptPages, buf: DmaBuf) -> None:
        self.pages = pages
        self.buf = buf
        self.attach: DmaBufAttachment | None = None
        self.pinned = False
        self.phys: Cell[phys_vec] = Cell(phys_vec(0, 0), label=f"{pages.label}.dmabuf.phys")
        self.tracker: TrackedList[tuple[Any, Any]] = TrackedList(
            label=f"{pages.label}.dmabuf.tracker")
        self.track_init(f"{pages.label}.dmabuf")

    def __repr__(self) -> str:
        return f"<iopt_pages_dmabuf {self.buf.name}>"

    @property
    def revoked(self) -> bool:
        """iopt_dmabuf_revoked: phys.len == 0 (pages->mutex or resv held)."""
        return self.phys.get().len == 0

    # ----- attach (iopt_map_dmabuf) -------------------------------------------------------
    def map(self) -> None:
        """Attach, pin (7.1), get the physical range; on failure nothing is left."""
        buf = self.buf
        kernel = self.pages.kernel
        attach = core.dma_buf_dynamic_attach(buf, IOMMUFD_DEV, IOPT_DMABUF_ATTACH_REVOKE_OPS,
                                             self)
        inverted = kernel.profile.has_bug(IOMMUFD_DMABUF_MAP_LOCK_INVERSION)
        if inverted:  # the seeded bug: pages->mutex held across taking resv
            self.pages.mutex.lock()
        try:
            buf.resv.lock_ctx()
        finally:
            if inverted:
                self.pages.mutex.unlock()
        try:
            if not inverted:
                with self.pages.mutex:  # lockdep learns resv -> pages->mutex
                    pass
            if kernel.profile.dma_buf_attach_revocable:  # the 7.1 revoke series' pin
                core.dma_buf_pin(attach)
                self.pinned = True
            try:
                vec = sym_vfio_pci_dma_buf_iommufd_map(attach)
            except OSError:
                if self.pinned:
                    core.dma_buf_unpin(attach)
                    self.pinned = False
                raise
        except OSError:
            buf.resv.unlock()
            core.dma_buf_detach(buf, attach)
            raise
        self.phys.set(vec)
        buf.resv.unlock()
        self.attach = attach

    def detach(self) -> None:
        """iopt_release_pages' dma-buf part: unpin (under resv), detach (drops the
        attachment's buffer reference)."""
        assert not self.tracker, f"{self!r} freed while mapped into {list(self.tracker)}"
        attach = self.attach
        assert attach is not None
        if self.pinned:
            self.buf.resv.lock_ctx()
            try:
                core.dma_buf_unpin(attach)
            finally:
                self.buf.resv.unlock()
            self.pinned = False
        core.dma_buf_detach(self.buf, attach)
        self.attach = None

    # ----- what the fill path reads -------------------------------------------------------
    def pfns(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """(offset start, offset end, physical address) of ``[lo, hi)`` — nothing once
        revoked (pfn_reader_dmabuf with phys.len 0: the fill maps nothing)."""
        vec = self.phys.get()
        if vec.len == 0 or hi <= lo:
            return []
        return [(lo, hi, vec.paddr + self.pages.base + lo)]

    # ----- the tracker (iopt_dmabuf_track_domain / untrack) -------------------------------
    def track_domain(self, area: Any, domain: Any) -> None:
        """iopt_dmabuf_track_domain: ``area`` is (about to be) mapped into ``domain``
        (pages->mutex held). kzalloc: a fault point, ENOMEM before any change."""
        lockdep_assert_held(self.pages.mutex, "iopt_dmabuf_track_domain")
        if any(a is area and d is domain for a, d in self.tracker):
            raise kerr(errno.EINVAL, f"iopt_dmabuf_track_domain: {area!r} already tracked")
        if self.pages.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "iopt_dmabuf_track_domain: kzalloc failed (injected)")
        self.tracker.append((area, domain))

    def untrack_domain(self, area: Any, domain: Any) -> None:
        """iopt_dmabuf_untrack_domain (pages->mutex held)."""
        lockdep_assert_held(self.pages.mutex, "iopt_dmabuf_untrack_domain")
        for i, (a, d) in enumerate(self.tracker):
            if a is area and d is domain:
                del self.tracker[i]
                return
        raise AssertionError(f"iopt_dmabuf_untrack_domain: {area!r} in {domain!r} untracked")

    def untrack_area(self, area: Any) -> None:
        """iopt_dmabuf_untrack_all_domains (pages->mutex held)."""
        lockdep_assert_held(self.pages.mutex, "iopt_dmabuf_untrack_all_domains")
        self.tracker[:] = [(a, d) for a, d in self.tracker if a is not area]

    # ----- revoke ---------------------------------------------------------------------------
    def revoke(self) -> None:
        """iopt_revoke_notify: resv held; unmap every tracked pair, then mark revoked."""
        self.buf.resv.assert_held("iopt_revoke_notify")
        with self.pages.mutex:
            if self.revoked:
                return
            done: list[tuple[int, Any]] = []
            skip = self.pages.kernel.profile.has_bug(IOMMUFD_REVOKE_SKIPS_UNMAP)
            for area, domain in [] if skip else list(self.tracker):
                _unmap_domain_range(domain, area.iova, area.length)
                done.append((area.iova, domain))
            vec = self.phys.get()
            self.phys.set(phys_vec(vec.paddr, 0))
            self.pages.kernel.sched.emit("iommufd", "dmabuf_revoke", buf=self.buf.name,
                                         pages=self.pages.label, unmapped=len(done))


def _unmap_domain_range(domain: Any, iova: int, length: int) -> None:
    """iopt_area_unmap_domain_range: the PTEs go, then the IOTLB."""
    domain.unmap_pages(iova, length)
    domain.iotlb_sync()


def iopt_revoke_notify(attach: DmaBufAttachment) -> None:
    """The importer's invalidate_mappings (move_notify before 7.1)."""
    imp: IoptDmabuf = attach.importer_priv
    imp.revoke()


IOPT_DMABUF_ATTACH_REVOKE_OPS = DmaBufAttachOps(invalidate=iopt_revoke_notify,
                                                allow_peer2peer=True, name="iommufd")


def iopt_alloc_dmabuf_pages(ucmd: Ucmd, f: File, start: int, length: int,
                            writable: bool) -> IoptPages:
    """iopt_alloc_dmabuf_pages: see the module docstring for the order of checks."""
    assert isinstance(f, DmaBuf)
    kernel = ucmd.ictx.kernel
    if length == 0 or start + length - 1 >= f.size() or length // PAGE >= MAX_NPFNS:
        raise kerr(errno.EINVAL, f"IOMMU_IOAS_MAP_FILE: [{start:#x}, +{length:#x}) is empty "
                   f"or past the end of {f.name} ({f.size():#x} bytes)")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "iopt_alloc_pages: kzalloc failed (injected)")
    pages = IoptPages(kernel, "dmabuf", length, writable, start=start)
    imp = IoptDmabuf(pages, f)
    try:
        imp.map()
    except OSError:
        pages.put()
        raise
    pages.dmabuf = imp
    return pages


# ----- the vfio-pci side (vfio_pci_dma_buf_iommufd_map) for the model's exporters ----------
def _revocable_iommufd_map(attach: DmaBufAttachment) -> phys_vec:
    """kernel/dma_buf/mock.py's exporter, vfio-pci's stand-in: revoked ENODEV, then more
    than one range EOPNOTSUPP."""
    exp: MockRevocableExporter = attach.dmabuf.priv
    track.read(exp, *_REVOKED)  # resv held (asserted by the caller)
    if exp.revoked:
        raise kerr(errno.ENODEV, f"vfio_pci_dma_buf_iommufd_map: {attach.dmabuf.name} is "
                   "revoked")
    if len(exp.extents) != 1:
        raise kerr(errno.EOPNOTSUPP, f"vfio_pci_dma_buf_iommufd_map: {attach.dmabuf.name} "
                   f"has {len(exp.extents)} ranges; iommufd takes one")
    s, e = exp.extents[0]
    return phys_vec(s, e - s)


def _bar_iommufd_map(attach: DmaBufAttachment) -> phys_vec:
    """p2p_exporter.py's BAR ranges (vfio's phys_vec list; never revoked): one range only."""
    exp: BarExporter = attach.dmabuf.priv
    if len(exp.vecs) != 1:
        raise kerr(errno.EOPNOTSUPP, f"vfio_pci_dma_buf_iommufd_map: {attach.dmabuf.name} "
                   f"has {len(exp.vecs)} ranges; iommufd takes one")
    return exp.vecs[0]


register_iommufd_map(MOCK_OPS, _revocable_iommufd_map)
register_iommufd_map(MOCK_OPS_PIN_REFUSED, _revocable_iommufd_map)
register_iommufd_map(BAR_OPS, _bar_iommufd_map)
