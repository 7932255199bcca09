"""In-kernel accesses to an IOAS: iommufd_access (drivers/iommu/iommufd/device.c
iommufd_access_create/attach/replace/detach/destroy, iommufd_access_pin_pages,
iommufd_access_unpin_pages, iommufd_access_rw, iommufd_access_notify_unmap; pages.c
iopt_area_add_access, iopt_area_remove_access, iopt_pages_rw_access).

An access lets a driver (an emulated device such as vfio-ap/ccw, mdev, the test mock) touch
the memory behind an IOAS with the CPU instead of DMA: it pins the pages under an IOVA range
(:meth:`IommufdAccess.pin_pages`) or copies to/from them (:meth:`IommufdAccess.rw`). Because
the IOVA space belongs to userspace, an IOAS_UNMAP of a range an access pins does not fail:
io_pagetable.py marks the area ``prevent_access`` (new pins and rw there fail EINVAL), calls
:meth:`IommufdAccess.notify_unmap` on every access of the IOAS, and the driver's ``unmap``
op must unpin what it holds there before it returns; after 100 rounds with pins still held
the unmap fails EDEADLOCK (the area stays, still ``prevent_access``, as in the kernel).

Objects: an access is an IOMMUFD_OBJ_ACCESS in the context's table (finalized at once: there
is no uAPI to make one) with one extra ``users`` reference owned by the driver until
:meth:`IommufdAccess.destroy_user`, so IOMMU_DESTROY of its id is EBUSY; it also holds the
context's file (iommufd_ctx_get), so closing the iommufd while an access lives releases
nothing until the access goes. While attached it holds a ``users`` reference on its IOAS and
sits in ``iopt.accesses`` (its ``iova_alignment`` — PAGE_SIZE for ops that pin, else 1 —
takes part in the IOAS's alignment).

Pins (iopt_area_add_access): per area covered, one more holder of the area's pages over the
page-granular byte range (IoptPages.hold: physical pins and the RLIMIT_MEMLOCK charge are
taken only for pages nobody held; a page an attached domain already pins costs nothing), and
``area.num_accesses`` + 1; unpin undoes exactly that. ``pins`` counts, per exact (iova,
length), the pins this access holds: the kernel's exact-match lookup in the pages'
access_itree, kept here per access to catch a driver that unpins what it never pinned (a
WARN_ON in the kernel: reported as an ``iommufd-access`` violation and ignored).

rw (iopt_pages_rw_access): the fast path copies with copy_to/from_user at the source user
address when the caller runs in the pages' mm (or is a kthread that borrows it); otherwise
(another mm, a memfd source, or the test's SLOW_PATH flag) the pages are pinned for the copy
(temporarily, and charged like any pin) and read or written physically through
``kernel.phys`` — one page with pin_user_pages_remote (uncharged), more through the pfn
reader. rw is not all or nothing: areas copied before a failing one stay copied.

Invariants: ``pins`` is empty once the access is detached by destroy; every pin of ``pins``
is one holder on the pages of each area it covers and one ``num_accesses`` on that area; an
attached access is in its IOAS's ``iopt.accesses`` exactly once. Units: IOVAs, lengths and
byte offsets; ``last`` inclusive as the kernel's.
Locking: ``ioas``, ``ioas_unpin`` and ``pins`` under ``ioas_lock`` (access->ioas_lock,
asserted in change_ioas); the areas are walked under ``iova_rwsem`` (read); holders and
``num_accesses`` change under the pages' ``mutex``; ``users`` is the object's refcount.
Lock order: driver lock -> ioas_lock -> iova_rwsem -> pages->mutex; ``ioas_lock`` is dropped
around the ``unmap`` op in change_ioas, as the kernel does.
Leaves out: sharing one pages-access record between identical pins (each pin here is its own
holder: same pins and charges, one kzalloc fault point per pin instead of per new range),
the xarray of pfns pins come from, IOMMUFD_ACCESS_RW_KTHREAD's mmget of an exited mm, the
syzkaller IOVA conversion, destroy's wait for a concurrent notify (a yield loop here).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Protocol

from ....errors import Fault, kerr
from ....hw.iommu import IOMMU_READ, IOMMU_WRITE
from ....sim import kinds
from ....sim.locks import Mutex
from ....sim.track import TrackedDict
from ...lockdep_assert import lockdep_assert_held
from ...mm.gup import pin_user_pages
from ...mm.mm import PAGE, page_down, page_up
from .io_pagetable import Area, IoPagetable
from .ioas import Ioas
from .main import IommufdCtx, IommufdObject
from .pages import ULONG_MAX, IoptPages

if TYPE_CHECKING:
    from ...fs.process import Process

# include/linux/iommufd.h
IOMMUFD_ACCESS_RW_READ = 0
IOMMUFD_ACCESS_RW_WRITE = 1 << 0
IOMMUFD_ACCESS_RW_KTHREAD = 1 << 1
IOMMUFD_ACCESS_RW_SLOW_PATH = 1 << 2  # __IOMMUFD_ACCESS_RW_SLOW_PATH (CONFIG_IOMMUFD_TEST)

#: A driver misusing the access API (the kernel's WARN_ONs in device.c).
ACCESS_MISUSE = kinds.register("iommufd-access", "iommufd")


class AccessOps(Protocol):
    """struct iommufd_access_ops: ``needs_pin_pages`` and the ``unmap`` callback (the
    driver's ``data`` is the ops object itself)."""

    needs_pin_pages: bool

    def unmap(self, iova: int, length: int) -> None:
        """Stop using ``[iova, iova + length)``: unpin everything pinned there."""


def contig_areas(iopt: IoPagetable, iova: int, last: int) -> tuple[list[tuple[Area, int]],
                                                                    bool]:
    """iopt_for_each_contig_area: the areas covering ``[iova, last]`` back to back, each with
    the first IOVA used in it, and whether they reach ``last`` (iopt_area_contig_done). The
    walk stops at a gap or at an area still being set up (no pages)."""
    lockdep_assert_held(iopt.iova_rwsem, "iopt_area_contig_init")
    out: list[tuple[Area, int]] = []
    cur = iova
    area = iopt.area_at(iova, iova)
    while area is not None and area.pages is not None and area.iova <= cur:
        out.append((area, cur))
        if area.last >= last:
            return out, True
        cur = area.last + 1
        area = iopt.area_at(cur, last)
        if area is not None and area.iova != cur:
            break
    return out, False


def _byte_range(area: Area, cur: int, last: int) -> tuple[int, int]:
    """The byte range ``[sb, eb)`` of the area's pages under ``[cur, min(last, area.last)]``
    (iopt_area_start_byte)."""
    alast = min(last, area.last)
    return area.start_byte + (cur - area.iova), area.start_byte + (alast - area.iova) + 1


def check_area_prot(area: Area, flags: int) -> bool:
    if flags & IOMMUFD_ACCESS_RW_WRITE:
        return bool(area.prot & IOMMU_WRITE)
    return bool(area.prot & IOMMU_READ)


class IommufdAccess(IommufdObject):
    """struct iommufd_access."""

    type = "ACCESS"

    def __init__(self, ictx: IommufdCtx, ops: AccessOps) -> None:
        super().__init__(ictx)
        self.ops = ops
        self.iova_alignment = PAGE if ops.needs_pin_pages else 1
        self.ioas: Ioas | None = None  # None also while change_ioas runs: blocks pins
        self.ioas_unpin: Ioas | None = None  # where unpin goes (set with ioas)
        n = ictx.kernel.next_id("iommufd_access")
        self.label = f"{ictx.label}.access{n}"
        self.ioas_lock = Mutex(ictx.kernel.sched, f"{self.label}.ioas_lock",
                               "access->ioas_lock")
        self.pins: dict[tuple[int, int], int] = TrackedDict(label=f"{self.label}.pins")

    def _misuse(self, msg: str) -> None:
        self.kernel.sched.violation(ACCESS_MISUSE, f"{self.label}: {msg}")

    # ----- lifetime ---------------------------------------------------------------------
    def destroy(self) -> None:
        """iommufd_access_destroy_object: detach (the driver's unmap drops its pins), then
        let go of the context."""
        with self.ioas_lock:
            if self.ioas is not None:
                self.change_ioas(None)
        if self.pins:
            self._misuse(f"destroyed with pins still held: {sorted(self.pins)}")
        self.ictx.put()  # iommufd_ctx_put

    def destroy_user(self) -> None:
        """iommufd_access_destroy: drop the driver's reference and remove the object,
        waiting for a concurrent unmap notification to finish with it."""
        sched = self.kernel.sched
        self.put()
        while True:
            try:
                self.ictx.object_remove(self.id, "iommufd_access_destroy")
                return
            except OSError as err:
                if err.errno != errno.EBUSY or not sched.in_task:
                    raise
            sched.yield_(f"{self.label}.users")  # REMOVE_WAIT: a notify still holds it

    # ----- the IOAS -------------------------------------------------------------------------
    def change_ioas(self, new: Ioas | None) -> None:
        """iommufd_access_change_ioas (ioas_lock held): join ``new`` first, then tell the
        driver to drop everything of the old IOAS (lock dropped around the op) and leave it."""
        lockdep_assert_held(self.ioas_lock, "iommufd_access_change_ioas")
        cur = self.ioas
        if cur is not self.ioas_unpin:
            raise kerr(errno.EBUSY, "iommufd_access_change_ioas: racing a concurrent detach")
        if cur is new:
            return
        self.ioas = None  # blocks pin_pages; unpin still goes to ioas_unpin
        if new is not None:
            try:
                if self.kernel.sched.fault("xa_alloc"):
                    raise kerr(errno.ENOMEM, "iopt_add_access: xa_alloc failed (injected)")
                new.iopt.add_access(self)
            except OSError:
                self.ioas = cur
                raise
            new.get()
        if cur is not None:
            self.ioas_lock.unlock()
            try:
                self.ops.unmap(0, ULONG_MAX)
            finally:
                self.ioas_lock.lock()
            cur.iopt.remove_access(self)
            cur.put()
        self.ioas = new
        self.ioas_unpin = new

    def _change_ioas_id(self, ioas_id: int) -> None:
        ioas = self.ictx.get_object(ioas_id, Ioas, "iommufd_access_change_ioas_id")
        try:
            self.change_ioas(ioas)
        finally:
            self.ictx.put_object(ioas)

    def attach(self, ioas_id: int) -> None:
        """iommufd_access_attach: the first IOAS (already attached: a driver bug, EINVAL)."""
        with self.ioas_lock:
            if self.ioas is not None:
                self._misuse("attach while attached")
                raise kerr(errno.EINVAL, "iommufd_access_attach: already attached")
            self._change_ioas_id(ioas_id)

    def replace(self, ioas_id: int) -> None:
        """iommufd_access_replace: move to another IOAS (ENOENT when not attached)."""
        with self.ioas_lock:
            if self.ioas is None:
                raise kerr(errno.ENOENT, "iommufd_access_replace: not attached")
            self._change_ioas_id(ioas_id)

    def detach(self) -> None:
        """iommufd_access_detach."""
        with self.ioas_lock:
            if self.ioas is None:
                self._misuse("detach while not attached")
                return
            self.change_ioas(None)

    def notify_unmap(self, iova: int, length: int) -> None:
        """The per-access step of iommufd_access_notify_unmap: unless the access is being
        destroyed (iommufd_lock_obj fails), hold it and call the driver's ``unmap``."""
        if self.users.get() == 0:
            return
        self.get()
        try:
            self.ops.unmap(iova, length)
        finally:
            self.put()

    # ----- pinning --------------------------------------------------------------------------
    def pin_pages(self, iova: int, length: int, flags: int) -> list[tuple[int, int]]:
        """iommufd_access_pin_pages: pin the pages under ``[iova, iova + length)``; returns
        their physical extents, in IOVA order, page granular (the ``out_pages`` array)."""
        if self.iova_alignment != PAGE:
            self._misuse("pin_pages with ops that do not pin (no needs_pin_pages)")
            raise kerr(errno.EINVAL, "iommufd_access_pin_pages: ops do not support pinning")
        if not length:
            raise kerr(errno.EINVAL, "iommufd_access_pin_pages: length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise kerr(errno.EOVERFLOW, f"iommufd_access_pin_pages: {iova:#x} + {length:#x} "
                       "overflows")
        with self.ioas_lock:
            if self.ioas is None:
                raise kerr(errno.ENOENT, "iommufd_access_pin_pages: no IOAS attached")
            iopt = self.ioas.iopt
            with iopt.iova_rwsem.read():
                pieces, done = contig_areas(iopt, iova, last)
                held: list[tuple[Area, IoptPages, int, int]] = []
                out: list[tuple[int, int]] = []
                try:
                    for area, cur in pieces:
                        sb, eb = _byte_range(area, cur, last)
                        ends_inside = area.last < last
                        if area.prevent_access or sb % PAGE or (ends_inside and eb % PAGE):
                            raise kerr(errno.EINVAL, f"iommufd_access_pin_pages: {area!r} "
                                       + ("is being unmapped" if area.prevent_access else
                                          "is not page aligned at the pinned range"))
                        if not check_area_prot(area, flags):
                            raise kerr(errno.EPERM, f"iommufd_access_pin_pages: {area!r} "
                                       "is not mapped with the needed permission")
                        pages = area.pages
                        assert pages is not None
                        lo, hi = page_down(sb), page_up(eb)
                        self._add_access(area, pages, lo, hi, flags)
                        held.append((area, pages, lo, hi))
                        for s, e, p in pages.pfns(lo, hi):
                            if out and out[-1][1] == p:
                                out[-1] = (out[-1][0], p + (e - s))
                            else:
                                out.append((p, p + (e - s)))
                    if not done:
                        raise kerr(errno.ENOENT, f"iommufd_access_pin_pages: [{iova:#x}, "
                                   f"{last:#x}] is not fully mapped by contiguous areas")
                except OSError:
                    for area, pages, lo, hi in held:
                        _remove_access(area, pages, lo, hi)
                    raise
            self.pins[(iova, length)] = self.pins.get((iova, length), 0) + 1
        return out

    def _add_access(self, area: Area, pages: IoptPages, lo: int, hi: int,
                    flags: int) -> None:
        """iopt_area_add_access: one more holder of ``[lo, hi)`` of the area's pages."""
        if flags & IOMMUFD_ACCESS_RW_WRITE and not pages.writable:
            raise kerr(errno.EPERM, "iopt_area_add_access: write pin of read-only pages")
        if pages.kind == "dmabuf":
            raise kerr(errno.EINVAL, "iopt_area_add_access: dma-buf pages cannot be pinned")
        if self.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "iopt_alloc_access: kzalloc failed (injected)")
        with pages.mutex:
            pages.hold(lo, hi, "iopt_area_add_access")
            area.num_accesses += 1

    def unpin_pages(self, iova: int, length: int) -> None:
        """iommufd_access_unpin_pages: undo one pin_pages of exactly ``[iova, +length)``."""
        if not length or iova + length - 1 > ULONG_MAX:
            self._misuse(f"unpin_pages of a bad range {iova:#x} + {length:#x}")
            return
        last = iova + length - 1
        with self.ioas_lock:
            if self.ioas_unpin is None:
                self._misuse("unpin_pages while not attached")
                return
            n = self.pins.get((iova, length), 0)
            if not n:
                self._misuse(f"unpin_pages of [{iova:#x}, +{length:#x}), never pinned")
                return
            iopt = self.ioas_unpin.iopt
            with iopt.iova_rwsem.read():
                pieces, done = contig_areas(iopt, iova, last)
                for area, cur in pieces:
                    pages = area.pages
                    assert pages is not None
                    sb, eb = _byte_range(area, cur, last)
                    _remove_access(area, pages, page_down(sb), page_up(eb))
                if not done:
                    self._misuse(f"unpin_pages: [{iova:#x}, {last:#x}] no longer mapped")
            if n == 1:
                del self.pins[(iova, length)]
            else:
                self.pins[(iova, length)] = n - 1

    # ----- rw -------------------------------------------------------------------------------
    def read(self, iova: int, n: int, flags: int = 0,
             current: Process | None = None) -> bytes:
        """iommufd_access_rw reading ``n`` bytes; ``current`` is the calling process."""
        buf = bytearray(n)
        self.rw(iova, buf, flags & ~IOMMUFD_ACCESS_RW_WRITE, current)
        return bytes(buf)

    def write(self, iova: int, data: bytes, flags: int = 0,
              current: Process | None = None) -> None:
        """iommufd_access_rw writing ``data``."""
        self.rw(iova, bytearray(data), flags | IOMMUFD_ACCESS_RW_WRITE, current)

    def rw(self, iova: int, buf: bytearray, flags: int, current: Process | None) -> None:
        """iommufd_access_rw: copy ``buf`` to (WRITE) or from the memory under the IOVAs."""
        length = len(buf)
        if not length:
            raise kerr(errno.EINVAL, "iommufd_access_rw: length 0")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise kerr(errno.EOVERFLOW, f"iommufd_access_rw: {iova:#x} + {length:#x} "
                       "overflows")
        with self.ioas_lock:
            if self.ioas is None:
                raise kerr(errno.ENOENT, "iommufd_access_rw: no IOAS attached")
            iopt = self.ioas.iopt
            with iopt.iova_rwsem.read():
                pieces, done = contig_areas(iopt, iova, last)
                pos = 0
                for area, cur in pieces:
                    if area.prevent_access:
                        raise kerr(errno.EINVAL, f"iommufd_access_rw: {area!r} is being "
                                   "unmapped")
                    if not check_area_prot(area, flags):
                        raise kerr(errno.EPERM, f"iommufd_access_rw: {area!r} is not mapped "
                                   "with the needed permission")
                    pages = area.pages
                    assert pages is not None
                    sb, eb = _byte_range(area, cur, last)
                    view = memoryview(buf)[pos: pos + (eb - sb)]
                    pages_rw_access(pages, sb, view, flags, current)
                    pos += eb - sb
                if not done:
                    raise kerr(errno.ENOENT, f"iommufd_access_rw: [{iova:#x}, {last:#x}] is "
                               "not fully mapped by contiguous areas")


def _remove_access(area: Area, pages: IoptPages, lo: int, hi: int) -> None:
    """iopt_area_remove_access: one holder less of ``[lo, hi)``."""
    with pages.mutex:
        assert area.num_accesses > 0, f"{area!r}: num_accesses underflow"
        pages.release(lo, hi)
        area.num_accesses -= 1


def pages_rw_access(pages: IoptPages, start_byte: int, buf: memoryview, flags: int,
                    current: Process | None) -> None:
    """iopt_pages_rw_access: ``len(buf)`` bytes at ``start_byte`` of ``pages``."""
    write = bool(flags & IOMMUFD_ACCESS_RW_WRITE)
    if write and not pages.writable:
        raise kerr(errno.EPERM, "iopt_pages_rw_access: write to read-only pages")
    if pages.kind == "dmabuf":
        raise kerr(errno.EINVAL, "iopt_pages_rw_access: dma-buf pages have no CPU access here")
    if pages.kind == "file":
        _rw_slow(pages, start_byte, buf, write)
        return
    assert pages.proc is not None
    change_mm = current is None or current.mm is not pages.proc.mm
    if flags & IOMMUFD_ACCESS_RW_SLOW_PATH:
        change_mm = True
    if not flags & IOMMUFD_ACCESS_RW_KTHREAD and change_mm:
        if page_down(start_byte) == page_down(start_byte + len(buf) - 1):
            _rw_page(pages, start_byte, buf, write)
        else:
            _rw_slow(pages, start_byte, buf, write)
        return
    # The fast path: copy_to/from_user at the source address in the pages' mm.
    addr = pages.base + start_byte
    try:
        if write:
            pages.proc.mm.access(addr, len(buf), write=True, data=bytes(buf), who="kernel")
        else:
            buf[:] = pages.proc.mm.access(addr, len(buf), write=False, who="kernel")
    except Fault as f:
        raise kerr(errno.EFAULT, f"iopt_pages_rw_access: {f}") from None


def _copy_phys(pages: IoptPages, ext: list[tuple[int, int, int]], start_byte: int,
               buf: memoryview, write: bool) -> None:
    """Copy between ``buf`` and the physical pieces ``ext`` (pages offsets -> phys)."""
    phys = pages.kernel.phys
    end = start_byte + len(buf)
    for s, e, p in ext:
        a, b = max(s, start_byte), min(e, end)
        if a >= b:
            continue
        at = p + (a - s)
        chunk = buf[a - start_byte: b - start_byte]
        if write:
            phys.write(at, bytes(chunk), who="iommufd_access_rw")
        else:
            chunk[:] = phys.read(at, b - a, who="iommufd_access_rw")


def _rw_slow(pages: IoptPages, start_byte: int, buf: memoryview, write: bool) -> None:
    """iopt_pages_rw_slow: through the pfn reader — pages pinned (and charged) for the copy
    unless already held."""
    lo, hi = page_down(start_byte), page_up(start_byte + len(buf))
    with pages.mutex:
        pages.hold(lo, hi, "iopt_pages_rw_slow")
        try:
            _copy_phys(pages, pages.pfns(lo, hi), start_byte, buf, write)
        finally:
            pages.release(lo, hi)


def _rw_page(pages: IoptPages, start_byte: int, buf: memoryview, write: bool) -> None:
    """iopt_pages_rw_page: pin_user_pages_remote of the one page, copy, unpin (no charge)."""
    assert pages.proc is not None
    lo = page_down(start_byte)
    try:
        pin = pin_user_pages(pages.proc.mm, pages.base + lo, PAGE, write)
    except OSError as err:
        raise kerr(err.errno or errno.EFAULT, f"iopt_pages_rw_page: {err.strerror}") from None
    try:
        ((p, _e),) = pin.extents
        _copy_phys(pages, [(lo, lo + PAGE, p)], start_byte, buf, write)
    finally:
        pin.unpin()


def iommufd_access_create(ictx: IommufdCtx, ops: AccessOps) -> IommufdAccess:
    """iommufd_access_create: a finalized ACCESS object, with the driver's reference and a
    reference on the context."""
    access = ictx.object_alloc(IommufdAccess(ictx, ops))
    access.get()  # the calling driver is a user until destroy_user
    ictx.get()  # iommufd_ctx_get
    ictx.finalize(access)
    return access
