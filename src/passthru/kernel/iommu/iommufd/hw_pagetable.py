"""HW pagetables: HWPT_PAGING and HWPT_NESTED objects and their ioctls
(drivers/iommu/iommufd/hw_pagetable.c, iommufd_private.h).

A HWPT wraps one hw ``IommuDomain`` made by the device's IOMMU driver (driver.py).
- HWPT_PAGING holds its IOAS (users + 1) and, from allocation to destruction, its domain is
  one of the IOAS's domains (``IoPagetable.table_add_domain``: the domain is filled with
  every area, and the first domain of an IOAS pins the areas' pages; the last one to go
  unpins them). ``auto_domain`` marks the ones iommufd_device_attach made for an IOAS pt_id
  (found again by later attaches to that IOAS, destroyed with their last device);
  ``nest_parent`` (IOMMU_HWPT_ALLOC_NEST_PARENT) lets nested HWPTs and vIOMMUs build on it.
- HWPT_NESTED holds its parent HWPT_PAGING (users + 1), or a vIOMMU (users + 1) whose
  nest parent it translates through; its domain's stage 1 is user data the driver parsed.
- ``pasid_compat`` (IOMMU_HWPT_ALLOC_PASID) allows attaching to a PASID; ``fault`` is a FAULT
  object (IOMMU_HWPT_FAULT_ID_VALID, users + 1).

IOMMU_HWPT_ALLOC checks, in the kernel's order: unknown flags or __reserved EOPNOTSUPP; data
type NONE with a length, or a type with length 0, EINVAL; the device (ENOENT); pt_id (ENOENT):
an IOAS gives a paging HWPT (user data goes to the driver), a HWPT_PAGING a nested one (flags
other than FAULT_ID_VALID|PASID or no data EOPNOTSUPP, a parent that is an auto domain, not a
nest parent, or fault-capable EINVAL), a vIOMMU a nested one through it, anything else EINVAL;
then DIRTY_TRACKING on a device that cannot EOPNOTSUPP, FAULT_ID_VALID with NEST_PARENT
EOPNOTSUPP; the fault id (ENOENT) last.
HWPT_INVALIDATE: __reserved EOPNOTSUPP; entries but no array or entry_len EINVAL; an unknown
id ENOENT; the id must be a HWPT_NESTED (or a vIOMMU, whose helper handles it): any other
object, a HWPT_PAGING included, EINVAL (since 6.14, when hwpt_id learnt to carry a vIOMMU id;
6.8-6.13 looked up a HWPT_NESTED only and said ENOENT; observed EINVAL on 7.3); the driver
handles entries in order and ``entry_num`` is written back with the number done, also on
failure.
SET_DIRTY_TRACKING / GET_DIRTY_BITMAP: paging HWPTs only (ENOENT), unknown flags EOPNOTSUPP,
no dirty ops EOPNOTSUPP; the bitmap range must be aligned to the IOAS alignment and to
page_size (EINVAL) and must not overflow (EOVERFLOW); the read walks the areas that follow
each other from ``iova`` and stops at the first hole, and a range that is not mapped (or only
partly) still succeeds (iommu_read_and_clear_dirty drops iova_bitmap_for_each's -EINVAL, as
it has since dirty tracking came in, 6.7); bits are OR-ed into the user bitmap, bit i for
[iova + i * page_size, +page_size), as iova_bitmap_set does: a dirty range that begins before
``iova`` is not recorded at all, and one that runs past the end sets its bits past the
bitmap's length too, as far as the end of the bitmap's last page.

Invariants: a live HWPT_PAGING's domain is in its IOAS's ``iopt.domains`` and the HWPT in
``ioas.hwpt_list``; a HWPT's users = 1 (table) + devices attached + nested children +
vIOMMUs + ioctls holding it. Units: bytes.
Locking: ``ioas.hwpt_list`` under the IOAS's mutex (ioas->mutex, :func:`ioas_mutex`);
``auto_domain`` is set before finalize and never changes; the rest is set at allocation.
Leaves out: enforce_cache_coherency (every model domain is coherent), the sw_msi page
install (iommufd_sw_msi), IOPF enable/disable (fault.py), the iova_bitmap's pinning of the
user bitmap (it is written with copy_to_user semantics).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....hw.iommu import IommuDomain
from ....sim.locks import Mutex
from ....uapi import iommufd as I
from ...lockdep_assert import lockdep_assert_held
from ...mm.mm import PAGE
from .driver import UserData, UserDataArray
from .ioas import Ioas, read_user, write_user
from .main import IommufdCtx, IommufdObject, Ucmd, ioctl_op
from .pages import ULONG_MAX

if TYPE_CHECKING:
    from .device import IommufdDevice

ALLOC_FLAGS = (I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
               | I.IOMMU_HWPT_FAULT_ID_VALID | I.IOMMU_HWPT_ALLOC_PASID)


def ioas_mutex(ioas: Ioas) -> Mutex:
    """ioas->mutex (serialises the auto-domain search and hwpt_list). Ioas (ioas.py) does not
    declare it yet; made here on first use."""
    m = getattr(ioas, "mutex", None)
    if m is None:
        m = Mutex(ioas.kernel.sched, f"{ioas.ictx.label}.ioas{ioas.id}.mutex", "ioas->mutex")
        ioas.__dict__["mutex"] = m  # a field ioas.py does not declare yet
    return m


class HwPagetable(IommufdObject):
    """struct iommufd_hw_pagetable: the common part."""

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.domain: IommuDomain | None = None
        self.driver: Any = None  # the IommuDriver that made the domain (domain->owner)
        self.pasid_compat = False
        self.fault: IommufdObject | None = None

    def _free_domain(self) -> None:
        if self.domain is not None:
            self.driver.domain_free(self.domain)
            self.domain = None
        if self.fault is not None:
            self.fault.put()
            self.fault = None


class HwptPaging(HwPagetable):
    """struct iommufd_hwpt_paging."""

    type = "HWPT_PAGING"

    def __init__(self, ictx: IommufdCtx, ioas: Ioas) -> None:
        super().__init__(ictx)
        self.ioas = ioas
        self.auto_domain = False
        self.nest_parent = False
        self.in_iopt = False  # the domain is in ioas.iopt.domains and self in hwpt_list

    def destroy(self) -> None:
        """iommufd_hwpt_paging_destroy (and _abort): leave the IOAS, free, put the IOAS."""
        if self.in_iopt:
            with ioas_mutex(self.ioas):
                self.ioas.hwpt_list.remove(self)
            assert self.domain is not None
            self.ioas.iopt.table_remove_domain(self.domain)
            self.in_iopt = False
        self._free_domain()
        self.ioas.put()

    def abort(self) -> None:
        """iommufd_hwpt_paging_abort: the IOAS mutex is held until finalize."""
        lockdep_assert_held(ioas_mutex(self.ioas), "iommufd_hwpt_paging_abort")
        if self.in_iopt:
            self.ioas.hwpt_list.remove(self)
            assert self.domain is not None
            self.ioas.iopt.table_remove_domain(self.domain)
            self.in_iopt = False
        self.destroy()


class HwptNested(HwPagetable):
    """struct iommufd_hwpt_nested."""

    type = "HWPT_NESTED"

    def __init__(self, ictx: IommufdCtx, parent: HwptPaging, viommu: Any = None) -> None:
        super().__init__(ictx)
        self.parent = parent
        self.viommu = viommu

    def destroy(self) -> None:
        """iommufd_hwpt_nested_destroy."""
        self._free_domain()
        if self.viommu is not None:
            self.viommu.put()
        else:
            self.parent.put()


def find_hwpt_paging(hwpt: HwPagetable | None) -> HwptPaging | None:
    """find_hwpt_paging: the paging HWPT whose IOAS an attach must reserve in."""
    return hwpt if isinstance(hwpt, HwptPaging) else None


def hwpt_put(ictx: IommufdCtx, hwpt: HwPagetable) -> None:
    """iommufd_hw_pagetable_put: an auto domain goes with its last user; others just lose a
    reference."""
    if isinstance(hwpt, HwptPaging) and hwpt.auto_domain:
        hwpt.put()
        if hwpt.users.get() == 1 and ictx.objects.get(hwpt.id) is hwpt:
            ictx.object_remove(hwpt.id, "iommufd_hw_pagetable_put")
        return
    hwpt.put()


def iommufd_hwpt_paging_alloc(ictx: IommufdCtx, ioas: Ioas, idev: IommufdDevice, pasid: int,
                              flags: int, immediate_attach: bool,
                              user_data: UserData | None) -> HwptPaging:
    """iommufd_hwpt_paging_alloc: allocated (id reserved, not finalized), its domain added
    to the IOAS (and attached to ``idev`` first with ``immediate_attach``). The caller holds
    the IOAS mutex and finalizes."""
    # breaks the cycle hw_pagetable -> device -> hw_pagetable
    from .device import iommufd_hw_pagetable_attach, iommufd_hw_pagetable_detach

    dev = idev.dev
    if flags & ~(I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                 | I.IOMMU_HWPT_FAULT_ID_VALID | I.IOMMU_HWPT_ALLOC_PASID):
        raise kerr(errno.EOPNOTSUPP, f"iommufd_hwpt_paging_alloc: flags {flags:#x}")
    if flags & I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING and not dev.driver.capable(dev,
                                                                           "dirty_tracking"):
        raise kerr(errno.EOPNOTSUPP, f"iommufd_hwpt_paging_alloc: {dev.name} cannot track "
                   "dirty pages")
    if flags & I.IOMMU_HWPT_FAULT_ID_VALID and flags & I.IOMMU_HWPT_ALLOC_NEST_PARENT:
        raise kerr(errno.EOPNOTSUPP, "iommufd_hwpt_paging_alloc: a nest parent cannot take "
                   "faults")
    hwpt = ictx.object_alloc(HwptPaging(ictx, ioas))
    ioas.get()
    hwpt.pasid_compat = bool(flags & I.IOMMU_HWPT_ALLOC_PASID)
    hwpt.nest_parent = bool(flags & I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    attached = False
    try:
        hwpt.driver = dev.driver
        hwpt.domain = dev.driver.domain_alloc_paging(dev, flags & ~I.IOMMU_HWPT_FAULT_ID_VALID,
                                                     user_data)
        if immediate_attach:
            iommufd_hw_pagetable_attach(hwpt, idev, pasid)
            attached = True
        ioas.iopt.table_add_domain(hwpt.domain)
        hwpt.in_iopt = True
        ioas.hwpt_list.append(hwpt)
    except BaseException:
        if attached:
            iommufd_hw_pagetable_detach(idev, pasid)
            hwpt.put()  # the attach's reference
        ictx.abort_and_destroy(hwpt)
        raise
    return hwpt


def iommufd_hwpt_nested_alloc(ictx: IommufdCtx, parent: HwptPaging, viommu: Any, flags: int,
                              user_data: UserData,
                              idev: IommufdDevice | None = None) -> HwptNested:
    """iommufd_hwpt_nested_alloc (``viommu`` None: through ``parent``, with ``idev``'s
    driver) or iommufd_viommu_alloc_hwpt_nested (``viommu`` given: its nest parent is the
    parent, and ``viommu.alloc_domain_nested(flags, user_data)`` makes the domain; the vIOMMU
    is held instead of the parent). Allocated, not finalized."""
    if flags & ~(I.IOMMU_HWPT_FAULT_ID_VALID | I.IOMMU_HWPT_ALLOC_PASID) or not user_data.len:
        raise kerr(errno.EOPNOTSUPP, f"nested HWPT: flags {flags:#x} or no user data")
    if viommu is None:
        assert idev is not None
        if parent.auto_domain or not parent.nest_parent or parent.fault is not None:
            raise kerr(errno.EINVAL, f"nested HWPT: {parent!r} is not a nest parent (or is "
                       "an auto domain, or takes faults)")
    hwpt = ictx.object_alloc(HwptNested(ictx, parent, viommu))
    hwpt.pasid_compat = bool(flags & I.IOMMU_HWPT_ALLOC_PASID)
    (viommu if viommu is not None else parent).get()
    try:
        assert parent.domain is not None
        if viommu is not None:
            hwpt.driver = parent.driver
            hwpt.domain = viommu.alloc_domain_nested(flags & ~I.IOMMU_HWPT_FAULT_ID_VALID,
                                                     user_data)
        else:
            assert idev is not None
            hwpt.driver = idev.dev.driver
            hwpt.domain = idev.dev.driver.domain_alloc_nested(
                idev.dev, parent.domain, flags & ~I.IOMMU_HWPT_FAULT_ID_VALID, user_data)
        assert hwpt.domain is not None
        if hwpt.domain.kind != "nested":
            raise kerr(errno.EINVAL, "nested HWPT: the driver made a non-nested domain")
    except BaseException:
        ictx.abort_and_destroy(hwpt)
        raise
    return hwpt


def get_hwpt_paging(ucmd: Ucmd, oid: int, what: str) -> HwptPaging:
    return ucmd.ictx.get_object(oid, HwptPaging, what)


@ioctl_op(I.IOMMU_HWPT_ALLOC, I.iommu_hwpt_alloc, "__reserved")
def iommufd_hwpt_alloc(ucmd: Ucmd) -> int:
    """IOMMU_HWPT_ALLOC."""
    # breaks the cycle hw_pagetable -> device -> hw_pagetable
    from .device import get_device

    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.flags & ~ALLOC_FLAGS or getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_HWPT_ALLOC: flags {cmd.flags:#x} or __reserved")
    if cmd.data_type == I.IOMMU_HWPT_DATA_NONE and cmd.data_len:
        raise kerr(errno.EINVAL, "IOMMU_HWPT_ALLOC: data_len without a data_type")
    if cmd.data_type != I.IOMMU_HWPT_DATA_NONE and not cmd.data_len:
        raise kerr(errno.EINVAL, "IOMMU_HWPT_ALLOC: a data_type with data_len 0")
    user_data = None
    if cmd.data_type != I.IOMMU_HWPT_DATA_NONE:
        user_data = UserData(ucmd.proc, cmd.data_type, cmd.data_uptr, cmd.data_len)
    idev = get_device(ucmd, cmd.dev_id, "IOMMU_HWPT_ALLOC")
    try:
        pt = ictx.get_object(cmd.pt_id, IommufdObject, "IOMMU_HWPT_ALLOC")
        try:
            # An IOAS's mutex is held from the paging allocation to finalize or abort
            # (iommufd_hwpt_alloc's out_unlock), as the abort asserts.
            lock = ioas_mutex(pt) if isinstance(pt, Ioas) else contextlib.nullcontext()
            with lock:
                _hwpt_alloc_locked(ucmd, pt, idev, user_data)
        finally:
            ictx.put_object(pt)
    finally:
        ictx.put_object(idev)
    return 0


def _hwpt_alloc_locked(ucmd: Ucmd, pt: IommufdObject, idev: IommufdDevice,
                       user_data: UserData | None) -> None:
    """The body of IOMMU_HWPT_ALLOC once ``pt`` is found (its IOAS mutex held if an IOAS)."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    hwpt: HwPagetable
    if isinstance(pt, Ioas):
        hwpt = iommufd_hwpt_paging_alloc(ictx, pt, idev, 0, cmd.flags, False, user_data)
    elif isinstance(pt, HwptPaging):
        if user_data is None:
            raise kerr(errno.EOPNOTSUPP, "IOMMU_HWPT_ALLOC: a nested HWPT needs user data")
        hwpt = iommufd_hwpt_nested_alloc(ictx, pt, None, cmd.flags, user_data, idev)
    elif pt.type == "VIOMMU":
        if user_data is None:
            raise kerr(errno.EOPNOTSUPP, "IOMMU_HWPT_ALLOC: a nested HWPT needs user data")
        parent: HwptPaging = pt.hwpt  # type: ignore[attr-defined]
        hwpt = iommufd_hwpt_nested_alloc(ictx, parent, pt, cmd.flags, user_data, idev)
    else:
        raise kerr(errno.EINVAL, f"IOMMU_HWPT_ALLOC: pt_id {cmd.pt_id} is a {pt.type}")
    try:
        if cmd.flags & I.IOMMU_HWPT_FAULT_ID_VALID:
            fault = ictx.objects.get(cmd.fault_id)
            if fault is None or fault.type != "FAULT":
                raise kerr(errno.ENOENT, f"IOMMU_HWPT_ALLOC: fault_id {cmd.fault_id} is not "
                           "a FAULT")
            fault.get()
            hwpt.fault = fault
        cmd.out_hwpt_id = hwpt.id
        ucmd.respond()
    except BaseException:
        ictx.abort_and_destroy(hwpt)
        raise
    ictx.finalize(hwpt)


@ioctl_op(I.IOMMU_HWPT_INVALIDATE, I.iommu_hwpt_invalidate, "__reserved")
def iommufd_hwpt_invalidate(ucmd: Ucmd) -> int:
    """IOMMU_HWPT_INVALIDATE (iommufd_hwpt_invalidate): entry_num is written back (entries
    handled) on every path after the argument checks."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    array = UserDataArray(ucmd.proc, cmd.data_type, cmd.data_uptr, cmd.entry_len,
                          cmd.entry_num)
    done = 0
    err: OSError | None = None
    try:
        if getattr(cmd, "__reserved"):
            raise kerr(errno.EOPNOTSUPP, "IOMMU_HWPT_INVALIDATE: __reserved is not zero")
        if cmd.entry_num and (not cmd.data_uptr or not cmd.entry_len):
            raise kerr(errno.EINVAL, "IOMMU_HWPT_INVALIDATE: entries without an array or "
                       "entry_len")
        pt = ictx.get_object(cmd.hwpt_id, IommufdObject, "IOMMU_HWPT_INVALIDATE")
        try:
            if isinstance(pt, HwptNested):
                assert pt.domain is not None
                try:
                    pt.driver.cache_invalidate_user(pt.domain, array)
                finally:
                    done = array.entry_num
            elif pt.type == "VIOMMU":
                try:
                    pt.cache_invalidate(array)  # type: ignore[attr-defined]
                finally:
                    done = array.entry_num
            else:
                raise kerr(errno.EINVAL, f"IOMMU_HWPT_INVALIDATE: {pt!r} is not a nested "
                           "HWPT or a vIOMMU")
        finally:
            ictx.put_object(pt)
    except OSError as e:
        err = e
    cmd.entry_num = done
    ucmd.respond()
    if err is not None:
        raise err
    return 0


@ioctl_op(I.IOMMU_HWPT_SET_DIRTY_TRACKING, I.iommu_hwpt_set_dirty_tracking, "__reserved")
def iommufd_hwpt_set_dirty_tracking(ucmd: Ucmd) -> int:
    """IOMMU_HWPT_SET_DIRTY_TRACKING (iopt_set_dirty_tracking: enabling clears old bits)."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.flags & ~I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE or getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_HWPT_SET_DIRTY_TRACKING: flags or __reserved")
    hwpt = get_hwpt_paging(ucmd, cmd.hwpt_id, "IOMMU_HWPT_SET_DIRTY_TRACKING")
    try:
        dom = hwpt.domain
        assert dom is not None
        enable = bool(cmd.flags & I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
        if not hwpt.driver.has_dirty_ops(dom):
            raise kerr(errno.EOPNOTSUPP, f"IOMMU_HWPT_SET_DIRTY_TRACKING: {hwpt!r} was not "
                       "allocated with DIRTY_TRACKING")
        iopt = hwpt.ioas.iopt
        with iopt.iova_rwsem.read():
            if enable:
                dom.dirty.remove(0, ULONG_MAX + 1)
            hwpt.driver.set_dirty_tracking(dom, enable)
    finally:
        ictx.put_object(hwpt)
    return 0


def check_iova_range(align: int, iova: int, length: int, page_size: int) -> None:
    """iommufd_check_iova_range."""
    last = iova + length - 1
    if length == 0 or iova > ULONG_MAX or last > ULONG_MAX:
        raise kerr(errno.EOVERFLOW, f"GET_DIRTY_BITMAP: [{iova:#x}, +{length:#x}) overflows")
    if iova & (align - 1) or (last + 1) & (align - 1):
        raise kerr(errno.EINVAL, f"GET_DIRTY_BITMAP: range not aligned to {align:#x}")
    if not page_size:
        raise kerr(errno.EINVAL, "GET_DIRTY_BITMAP: page_size 0")
    if iova % page_size or (last + 1) % page_size:
        raise kerr(errno.EINVAL, f"GET_DIRTY_BITMAP: range not aligned to page_size "
                   f"{page_size:#x}")


def record_bits(ucmd: Ucmd, bitmap: int, base: int, length: int, page_size: int,
                dirty: list[tuple[int, int]]) -> None:
    """iommu_dirty_bitmap_record -> iova_bitmap_set (iova_bitmap.c): OR the bits of the dirty
    ranges into the user bitmap of ``[base, base + length)``. A range starting before
    ``base`` fails iova_bitmap_advance_to and records nothing; one running past the end is
    recorded from its start through the pages iova_bitmap_get pins for the u64 words from
    the one holding its first bit (bits past ``length`` included) [unconfirmed for a bitmap
    longer than the 512 pages one pin covers]."""
    words = (length - 1) // page_size // 64 + 1  # mapped_total_index
    for s, e in dirty:
        if s < base:
            continue
        first, last = (s - base) // page_size, (e - 1 - base) // page_size
        if e > base + length:
            word = first // 64  # iova_bitmap_advance_to: the window starts at its word
            addr = bitmap + 8 * word
            npages = min(-(-(words - word) * 8 // PAGE) + bool(addr % PAGE), PAGE // 8)
            pinned_end = (addr & ~(PAGE - 1)) + npages * PAGE
            last = min(last, (pinned_end - bitmap) * 8 - 1)
        lo, hi = first // 8, last // 8
        n = hi - lo + 1
        # One bignum OR per dirty extent: no Python loop over its pages (bit i of the bytes,
        # read little-endian, is bit i % 8 of byte i // 8, as the kernel's bitmap lays it).
        bits = int.from_bytes(read_user(ucmd, bitmap + lo, n), "little")
        bits |= ((1 << (last - first + 1)) - 1) << (first - 8 * lo)
        write_user(ucmd, bitmap + lo, bits.to_bytes(n, "little"))


@ioctl_op(I.IOMMU_HWPT_GET_DIRTY_BITMAP, I.iommu_hwpt_get_dirty_bitmap, "data")
def iommufd_hwpt_get_dirty_bitmap(ucmd: Ucmd) -> int:
    """IOMMU_HWPT_GET_DIRTY_BITMAP (iopt_read_and_clear_dirty_data)."""
    cmd, ictx = ucmd.cmd, ucmd.ictx
    if cmd.flags & ~I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR or getattr(cmd, "__reserved"):
        raise kerr(errno.EOPNOTSUPP, "IOMMU_HWPT_GET_DIRTY_BITMAP: flags or __reserved")
    hwpt = get_hwpt_paging(ucmd, cmd.hwpt_id, "IOMMU_HWPT_GET_DIRTY_BITMAP")
    try:
        dom = hwpt.domain
        assert dom is not None
        if not hwpt.driver.has_dirty_ops(dom):
            raise kerr(errno.EOPNOTSUPP, f"IOMMU_HWPT_GET_DIRTY_BITMAP: {hwpt!r} has no dirty "
                       "ops")
        iopt = hwpt.ioas.iopt
        with iopt.iova_rwsem.read():
            check_iova_range(iopt.iova_alignment, cmd.iova, cmd.length, cmd.page_size)
            # __iommu_read_and_clear_dirty: iopt_for_each_contig_area from cmd.iova, up to
            # the first hole; its -EINVAL for the hole is dropped (the ioctl succeeds)
            end = cmd.iova + cmd.length
            pos = cmd.iova
            for ext in iopt.areas.overlapping(cmd.iova, end):
                if ext.start > pos:
                    break
                pos = ext.end
            if pos > cmd.iova:
                no_clear = bool(cmd.flags & I.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR)
                dirty = hwpt.driver.read_and_clear_dirty(dom, cmd.iova, pos - cmd.iova,
                                                         no_clear)
                record_bits(ucmd, cmd.data, cmd.iova, cmd.length, cmd.page_size, dirty)
    finally:
        ictx.put_object(hwpt)
    return 0


_ = ctypes  # the struct sizes come from the uapi module
