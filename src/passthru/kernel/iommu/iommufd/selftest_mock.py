"""The test mock's device and domain ops of IOMMU_TEST_CMD (drivers/iommu/iommufd/selftest.c:
struct selftest_obj, iommufd_test_mock_domain, _mock_domain_replace, _md_check_pa,
_md_check_refs, _md_check_iotlb, _dev_check_cache, _add_reserved, _dirty, _pasid_*).

MOCK_DOMAIN / MOCK_DOMAIN_FLAGS make a SELFTEST object (the "stdev") owning a new mock device
(driver.py) bound to this iommufd and attached to ``cmd.id`` (an IOAS: an auto domain; a
HWPT: that one); the reply names the stdev, the HWPT and the device. Destroying the stdev
(IOMMU_DESTROY or closing the fd) detaches every PASID and the RID, unbinds and removes the
device. MOCK_DOMAIN_REPLACE and PASID_ATTACH/REPLACE/DETACH drive iommufd_device_* on the
stdev's device; PASID_CHECK_HWPT compares the domain the hw PASID table holds with a HWPT's
(hwpt_id 0: nothing attached), EINVAL on a mismatch.
Checks: MD_CHECK_MAP (arguments not MOCK_PAGE_SIZE aligned EINVAL; a paging mock HWPT, else
ENOENT/EINVAL) walks the domain and the user VA together: each MOCK_PAGE_SIZE must translate
to the physical address the user VA has (EINVAL otherwise); MD_CHECK_REFS (page aligned, else
EINVAL) compares the pin count of every page under the user range with ``refs`` (EIO);
MD_CHECK_IOTLB and DEV_CHECK_CACHE compare the mock's nested IOTLB / device cache entry
(EINVAL). ADD_RESERVED reserves ``[start, +length)`` in an IOAS with no owner (it goes with
the IOAS). DIRTY (7.x: the page table's set_dirty) marks dirty, for each bit set in the user
bitmap, the whole leaf PTE holding that bit's first IOVA (nothing where it is not mapped), and
returns how many bits were set (``out_nr_dirty``, mapped or not).

Invariants: a finalized SELFTEST object owns exactly one bound mock device; the device lives
as long as the object. Units: bytes; bitmap bit i is ``[iova + i * page_size, +page_size)``.
Locking: none of its own (the device's lock, the IOAS's rwsems, mmap_lock for user walks).
Leaves out: syzkaller id/IOVA conversion, the mock's MOCK_FLAGS_DEVICE_HUGE_IOVA details
beyond the page size.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from ....errors import Fault, kerr
from ....uapi import iommufd as I
from ...mm.mm import PAGE
from .device import (
    IommufdDevice,
    get_device,
    iommufd_device_attach,
    iommufd_device_bind,
    iommufd_device_detach,
    iommufd_device_replace,
    iommufd_device_unbind,
)
from .driver import (
    IOMMU_NO_PASID,
    MOCK_DRIVER,
    Device,
    MockNestedDomain,
    mock_dev_create,
    mock_dev_destroy,
)
from .hw_pagetable import HwPagetable, HwptNested, HwptPaging
from .ioas import get_ioas, read_user
from .main import IommufdCtx, IommufdObject, Ucmd
from .pages import ULONG_MAX
from .selftest import test_op

if TYPE_CHECKING:
    from ....hw.iommu import IommuDomain

MOCK_PAGE = I.MOCK_PAGE_SIZE


class SelftestObj(IommufdObject):
    """struct selftest_obj (TYPE_IDEV): a mock device bound to the context."""

    type = "SELFTEST"

    def __init__(self, ictx: IommufdCtx) -> None:
        super().__init__(ictx)
        self.idev: IommufdDevice | None = None
        self.mdev: Device | None = None

    def destroy(self) -> None:
        """selftest_object_destroy: detach, unbind, remove the device."""
        idev, mdev = self.idev, self.mdev
        if idev is None or mdev is None:
            return
        for pasid in sorted(idev.attached, reverse=True):  # PASIDs first, the RID (0) last
            iommufd_device_detach(idev, pasid)
        iommufd_device_unbind(idev)
        mock_dev_destroy(self.kernel, mdev)
        self.idev = self.mdev = None

    def abort(self) -> None:
        pass


def get_selftest_idev(ucmd: Ucmd, oid: int, what: str) -> tuple[SelftestObj, IommufdDevice]:
    """iommufd_test_get_selftest_obj: ENOENT unless ``oid`` is a SELFTEST object."""
    sobj = ucmd.ictx.get_object(oid, SelftestObj, what)
    if sobj.idev is None:
        ucmd.ictx.put_object(sobj)
        raise kerr(errno.EINVAL, f"{what}: {sobj!r} has no device")
    return sobj, sobj.idev


def mock_domain(ucmd: Ucmd, dev_flags: int, out: Any) -> int:
    """iommufd_test_mock_domain."""
    ictx = ucmd.ictx
    sobj = ictx.object_alloc(SelftestObj(ictx))
    try:
        mdev = mock_dev_create(ictx.kernel, dev_flags)
        try:
            idev = iommufd_device_bind(ictx, mdev)
            try:
                pt_id = iommufd_device_attach(idev, None, ucmd.cmd.id)
                try:
                    out.out_hwpt_id = pt_id
                    out.out_stdev_id = sobj.id
                    out.out_idev_id = idev.id
                    ucmd.respond()
                except BaseException:
                    iommufd_device_detach(idev, None)
                    raise
            except BaseException:
                iommufd_device_unbind(idev)
                raise
        except BaseException:
            mock_dev_destroy(ictx.kernel, mdev)
            raise
    except BaseException:
        ictx.abort(sobj)
        raise
    sobj.idev, sobj.mdev = idev, mdev
    ictx.finalize(sobj)
    return 0


@test_op(I.IOMMU_TEST_OP_MOCK_DOMAIN)
def test_mock_domain(ucmd: Ucmd) -> int:
    return mock_domain(ucmd, 0, ucmd.cmd.mock_domain)


@test_op(I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS)
def test_mock_domain_flags(ucmd: Ucmd) -> int:
    c = ucmd.cmd.mock_domain_flags
    return mock_domain(ucmd, c.dev_flags, c)


@test_op(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE)
def test_mock_domain_replace(ucmd: Ucmd) -> int:
    """iommufd_test_mock_domain_replace: ``pt_id`` is written back with the HWPT used."""
    c = ucmd.cmd.mock_domain_replace
    sobj, idev = get_selftest_idev(ucmd, ucmd.cmd.id, "MOCK_DOMAIN_REPLACE")
    try:
        c.pt_id = iommufd_device_replace(idev, None, c.pt_id)
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(sobj)
    return 0


def get_md_pagetable(ucmd: Ucmd, oid: int, cls: type[HwPagetable], what: str) -> HwPagetable:
    """get_md_pagetable(_nested): a HWPT of ``cls`` whose domain the mock made (EINVAL)."""
    hwpt = ucmd.ictx.get_object(oid, cls, what)
    if hwpt.driver is not MOCK_DRIVER:
        ucmd.ictx.put_object(hwpt)
        raise kerr(errno.EINVAL, f"{what}: {hwpt!r} is not a mock domain")
    return hwpt


def _user_pieces(ucmd: Ucmd, uptr: int, length: int) -> list[tuple[int, int, int]]:
    """get_user_pages_fast of ``[uptr, +length)``: (vstart, vend, phys or -1)."""
    mm = ucmd.proc.mm
    mm.mmap_lock.down_read()
    try:
        return mm.resolve(uptr, length, False)
    except Fault as f:
        raise kerr(errno.EFAULT, f"get_user_pages_fast: {f}") from None
    finally:
        mm.mmap_lock.up_read()


@test_op(I.IOMMU_TEST_OP_MD_CHECK_MAP)
def test_md_check_pa(ucmd: Ucmd) -> int:
    """iommufd_test_md_check_pa."""
    c = ucmd.cmd.check_map
    if c.iova % MOCK_PAGE or c.length % MOCK_PAGE or c.uptr % MOCK_PAGE \
            or c.uptr + c.length > ULONG_MAX:
        raise kerr(errno.EINVAL, "MD_CHECK_MAP: iova, length or uptr not MOCK_PAGE_SIZE "
                   "aligned, or overflowing")
    hwpt = get_md_pagetable(ucmd, ucmd.cmd.id, HwptPaging, "MD_CHECK_MAP")
    try:
        dom = hwpt.domain
        assert dom is not None and dom.table is not None
        for vs, ve, p in _user_pieces(ucmd, c.uptr, c.length) if c.length else []:
            io_s = c.iova + (vs - c.uptr)
            io_e = io_s + (ve - vs)
            pos = io_s
            for ms, me, mp, _prot in dom.table.mapped(io_s, io_e):
                if ms != pos or p < 0 or mp != p + (ms - io_s):
                    break
                pos = me
            if pos != io_e:
                raise kerr(errno.EINVAL, f"MD_CHECK_MAP: iova {pos:#x} of {dom.name} does not "
                           f"map the page under user VA {c.uptr + (pos - c.iova):#x}")
    finally:
        ucmd.ictx.put_object(hwpt)
    return 0


@test_op(I.IOMMU_TEST_OP_MD_CHECK_REFS)
def test_md_check_refs(ucmd: Ucmd) -> int:
    """iommufd_test_md_check_refs: every page's pin count equals ``refs`` (EIO)."""
    c = ucmd.cmd.check_refs
    if c.length % PAGE or c.uptr % PAGE:
        raise kerr(errno.EINVAL, "MD_CHECK_REFS: uptr or length not page aligned")
    pins = ucmd.ictx.kernel.phys.pins
    for vs, ve, p in _user_pieces(ucmd, c.uptr, c.length) if c.length else []:
        counts = [0] if p < 0 else (
            [v for _, _, v in pins.overlapping(p, p + (ve - vs))]
            + ([0] if pins.gaps(p, p + (ve - vs)) else []))
        if any(n != c.refs for n in counts):
            raise kerr(errno.EIO, f"MD_CHECK_REFS: a page under [{vs:#x}, {ve:#x}) has pin "
                       f"counts {sorted(set(counts))}, not {c.refs}")
    return 0


@test_op(I.IOMMU_TEST_OP_MD_CHECK_IOTLB)
def test_md_check_iotlb(ucmd: Ucmd) -> int:
    """iommufd_test_md_check_iotlb."""
    c = ucmd.cmd.check_iotlb
    hwpt = get_md_pagetable(ucmd, ucmd.cmd.id, HwptNested, "MD_CHECK_IOTLB")
    try:
        assert isinstance(hwpt.domain, MockNestedDomain)
        iotlb = hwpt.domain.mock_iotlb
        if c.id > I.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX or iotlb[c.id] != c.iotlb:
            raise kerr(errno.EINVAL, f"MD_CHECK_IOTLB: entry {c.id} is not {c.iotlb:#x}")
    finally:
        ucmd.ictx.put_object(hwpt)
    return 0


@test_op(I.IOMMU_TEST_OP_DEV_CHECK_CACHE)
def test_dev_check_cache(ucmd: Ucmd) -> int:
    """iommufd_test_dev_check_cache."""
    c = ucmd.cmd.check_dev_cache
    idev = get_device(ucmd, ucmd.cmd.id, "DEV_CHECK_CACHE")
    try:
        if idev.dev.driver is not MOCK_DRIVER:
            raise kerr(errno.EINVAL, f"DEV_CHECK_CACHE: {idev.dev.name} is not a mock device")
        if c.id > I.MOCK_DEV_CACHE_ID_MAX or idev.dev.cache[c.id] != c.cache:
            raise kerr(errno.EINVAL, f"DEV_CHECK_CACHE: entry {c.id} is not {c.cache:#x}")
    finally:
        ucmd.ictx.put_object(idev)
    return 0


@test_op(I.IOMMU_TEST_OP_ADD_RESERVED)
def test_add_reserved(ucmd: Ucmd) -> int:
    """iommufd_test_add_reserved: owner None (removed with the IOAS)."""
    c = ucmd.cmd.add_reserved
    ioas = get_ioas(ucmd, ucmd.cmd.id, "ADD_RESERVED")
    try:
        with ioas.iopt.iova_rwsem.write():
            ioas.iopt.reserve_iova(c.start, c.start + c.length - 1, None)
    finally:
        ucmd.ictx.put_object(ioas)
    return 0


DIRTY_MAX_BITS = (16 << 20) * 8  # iommufd_test_dirty: SZ_16M * BITS_PER_BYTE


@test_op(I.IOMMU_TEST_OP_DIRTY)
def test_dirty(ucmd: Ucmd) -> int:
    """iommufd_test_dirty: ``mock->iommu.ops->set_dirty`` at the first IOVA of each bit set
    in the user bitmap: the leaf PTE there becomes dirty (-ENOENT where nothing is mapped,
    ignored); every set bit counts."""
    c = ucmd.cmd.dirty
    if not c.page_size or not c.length or c.iova % c.page_size or c.length % c.page_size \
            or not c.uptr:
        raise kerr(errno.EINVAL, "DIRTY: bad page_size, length, iova or uptr")
    nbits = c.length // c.page_size
    if nbits > DIRTY_MAX_BITS:
        raise kerr(errno.EOVERFLOW, f"DIRTY: {nbits} bits, more than SZ_16M bytes of bitmap")
    hwpt = get_md_pagetable(ucmd, ucmd.cmd.id, HwptPaging, "DIRTY")
    try:
        dom: IommuDomain | None = hwpt.domain
        assert dom is not None and dom.table is not None
        if not dom.dirty_tracking:
            raise kerr(errno.EINVAL, f"DIRTY: dirty tracking is off on {dom.name}")
        if ucmd.ictx.kernel.sched.fault("kvzalloc"):
            raise kerr(errno.ENOMEM, "DIRTY: kvzalloc of the bitmap (injected)")
        bits = read_user(ucmd, c.uptr, (nbits + 7) // 8)
        count = 0
        for byte_index, byte in enumerate(bits):
            for bit in range(8) if byte else ():
                i = 8 * byte_index + bit
                if i >= nbits or not byte >> bit & 1:
                    continue
                count += 1
                leaf = dom.leaf(c.iova + i * c.page_size)
                if leaf is not None:
                    dom.dirty.set(*leaf, True)
        c.out_nr_dirty = count
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(hwpt)
    return 0


@test_op(I.IOMMU_TEST_OP_PASID_ATTACH)
def test_pasid_attach(ucmd: Ucmd) -> int:
    c = ucmd.cmd.pasid_attach
    sobj, idev = get_selftest_idev(ucmd, ucmd.cmd.id, "PASID_ATTACH")
    try:
        c.pt_id = iommufd_device_attach(idev, c.pasid, c.pt_id)
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(sobj)
    return 0


@test_op(I.IOMMU_TEST_OP_PASID_REPLACE)
def test_pasid_replace(ucmd: Ucmd) -> int:
    c = ucmd.cmd.pasid_replace
    sobj, idev = get_selftest_idev(ucmd, ucmd.cmd.id, "PASID_REPLACE")
    try:
        c.pt_id = iommufd_device_replace(idev, c.pasid, c.pt_id)
        ucmd.respond()
    finally:
        ucmd.ictx.put_object(sobj)
    return 0


@test_op(I.IOMMU_TEST_OP_PASID_DETACH)
def test_pasid_detach(ucmd: Ucmd) -> int:
    c = ucmd.cmd.pasid_detach
    sobj, idev = get_selftest_idev(ucmd, ucmd.cmd.id, "PASID_DETACH")
    try:
        iommufd_device_detach(idev, c.pasid)
    finally:
        ucmd.ictx.put_object(sobj)
    return 0


@test_op(I.IOMMU_TEST_OP_PASID_CHECK_HWPT)
def test_pasid_check_hwpt(ucmd: Ucmd) -> int:
    """iommufd_test_pasid_check_hwpt: the hw PASID entry holds the HWPT's domain."""
    c = ucmd.cmd.pasid_check
    sobj, idev = get_selftest_idev(ucmd, ucmd.cmd.id, "PASID_CHECK_HWPT")
    try:
        dev = idev.dev
        have = dev.iommu.domain_of(dev.name, None if c.pasid == IOMMU_NO_PASID else c.pasid)
        if not c.hwpt_id:
            if have is not None and have is not dev.iommu.blocked:
                raise kerr(errno.EINVAL, f"PASID_CHECK_HWPT: PASID {c.pasid} is attached to "
                           f"{have.name}")
            return 0
        hwpt = ucmd.ictx.get_object(c.hwpt_id, HwPagetable, "PASID_CHECK_HWPT")
        try:
            if hwpt.domain is not have:
                raise kerr(errno.EINVAL, f"PASID_CHECK_HWPT: PASID {c.pasid} is on "
                           f"{have.name if have else 'nothing'}, not {hwpt!r}")
        finally:
            ucmd.ictx.put_object(hwpt)
    finally:
        ucmd.ictx.put_object(sobj)
    return 0


@test_op(I.IOMMU_TEST_OP_TRIGGER_IOPF)
def test_trigger_iopf(ucmd: Ucmd) -> int:
    """iommufd_test_trigger_iopf -> iommu_report_device_fault: a page request from device
    ``dev_id`` at ``pasid``; a fault-capable HWPT attached there queues it on its FAULT
    object (iommufd_fault_iopf_handler); otherwise the iopf core answers it itself."""
    c = ucmd.cmd.trigger_iopf
    idev = get_device(ucmd, c.dev_id, "TRIGGER_IOPF")
    try:
        hwpt = idev.attached.get(c.pasid)
        if hwpt is None and c.pasid != IOMMU_NO_PASID:
            # find_fault_handler: the mock driver has a user-managed PASID table
            # (user_pasid_table), so a PASID without its own attachment faults through the
            # nested domain on the RID.
            rid = idev.attached.get(IOMMU_NO_PASID)
            hwpt = rid if isinstance(rid, HwptNested) else None
        fault = getattr(hwpt, "fault", None) if hwpt is not None else None
        if fault is None:
            return 0
        flags = I.IOMMU_PGFAULT_FLAGS_LAST_PAGE
        if c.pasid != IOMMU_NO_PASID:
            flags |= I.IOMMU_PGFAULT_FLAGS_PASID_VALID
        fault.report(I.iommu_hwpt_pgfault(flags=flags, dev_id=idev.id, pasid=c.pasid,
                                          grpid=c.grpid, perm=c.perm, addr=c.addr))
    finally:
        ucmd.ictx.put_object(idev)
    return 0
