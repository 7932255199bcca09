"""The IOMMU driver interface iommufd calls (struct iommu_ops / iommu_domain_ops /
iommu_dirty_ops, include/linux/iommu.h), the model's device descriptor (struct device as the
iommu core sees it), and the test mock driver of drivers/iommu/iommufd/selftest.c.

A :class:`Device` sits behind one hardware :class:`~passthru.hw.iommu.Iommu` unit and names
its :class:`IommuDriver` (``dev_iommu_ops``), its PASID width (``max_pasids``, 0: no PASID),
its reserved regions (``iommu_get_resv_regions``: inclusive ``(start, last, kind)``) and, for
the mock, ``flags`` (MOCK_FLAGS_DEVICE_*) and ``cache`` (the mock's per-device cache, read by
IOMMU_TEST_OP_DEV_CHECK_CACHE and invalidated through a vIOMMU). The driver's ops make hw
``IommuDomain`` objects; the mock's have the mock aperture [MOCK_APERTURE_START,
MOCK_APERTURE_LAST] and page size MOCK_PAGE_SIZE (2048; MOCK_HUGE_PAGE_SIZE added for
MOCK_IOMMUPT_HUGE), and its nested domains carry ``mock_iotlb[MOCK_NESTED_DOMAIN_IOTLB_NUM]``.

Mock rules (selftest.c, 7.x): paging flags other than NEST_PARENT|DIRTY_TRACKING|PASID, or
DIRTY_TRACKING for a MOCK_FLAGS_DEVICE_NO_DIRTY device: EOPNOTSUPP; paging user data other
than IOMMU_HWPT_DATA_SELFTEST: EOPNOTSUPP; nested: data type not SELFTEST or flags other than
PASID EOPNOTSUPP, parent not a mock nest parent EINVAL, short data EINVAL; attaching a
dirty-tracking domain to a NO_DIRTY device EINVAL; a PASID replace at
IOMMU_TEST_PASID_RESERVED ENOMEM (the selftest's designed failure); hw_info answers
IOMMU_HW_INFO_TYPE_SELFTEST with test_reg = IOMMU_HW_INFO_SELFTEST_REGVAL (an input type other
than DEFAULT or SELFTEST: EOPNOTSUPP).
Dirty bits (7.x: the mock's table is generic_pt's AMDv1 "mock" format, iommu_pt.h
set_dirty / read_and_clear_dirty, fmt/amdv1.h): a dirty bit belongs to a leaf PTE, and the
mock's leaves are any power of two from MOCK_PAGE_SIZE (MOCK_IOMMUPT_HUGE: PAGE_SIZE and
MOCK_HUGE_PAGE_SIZE only), as large as the map call allows (``IommuDomain.leaf``).
IOMMU_TEST_OP_DIRTY marks the whole leaf holding an IOVA (so with huge pages disabled a
PAGE_SIZE leaf, two mock pages); read_and_clear_dirty reports every dirty leaf the range
touches whole and clears it whole unless NO_CLEAR; it does not look at MOCK_DIRTY_TRACK (a
read with tracking off reports what was left dirty).

Invariants: a device's ``owner`` is the iommufd context that claimed DMA ownership (None:
the kernel's DMA API owns it); ``owner_cnt`` counts the claims. Units: bytes, inclusive
``last`` for reserved regions and apertures.
Locking: ``owner``/``owner_cnt`` are group->mutex state (``Cell``); ``cache`` and
``mock_iotlb`` are the mock's plain arrays written by invalidation (``atomic``: the kernel
writes them without a lock, each entry a u32 store).
Leaves out: iommu groups with several devices (every device is its own group, as the mock's
generic_device_group gives), ATS, IOPF enable/disable (fault.py's business), the generic_pt
page-table formats of the 7.x mock (MOCK_IOMMUPT_AMDV1): every mock domain is the flat hw
IoPageTable, whose ``leaf`` stands for the format's leaf PTEs; which reserved region the 7.3
mock reports is **[unconfirmed]**: the model gives mock devices the SW_MSI window
[0x80000000, +1 MiB) of the 6.15 selftest, which lies outside the mock aperture, so
IOVA_RANGES is the same either way.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....hw.iommu import Iommu, IommuDomain
from ....sim import track
from ....sim.track import Cell, TrackedList
from ....uapi import iommufd as I
from ...fs.uaccess import UserArg
from ...init import kernel_static
from ...mm.mm import PAGE

if TYPE_CHECKING:
    from ...core import Kernel
    from ...fs.process import Process

IOMMU_NO_PASID = 0  # include/linux/iommu.h: the RID's "PASID"

#: iommu_resv_type names used in ``Device.resv_regions`` kinds.
RESV_DIRECT, RESV_RESERVED, RESV_MSI, RESV_SW_MSI = "direct", "reserved", "msi", "sw_msi"

MOCK_SW_MSI_BASE = 0x8000_0000
MOCK_SW_MSI_LENGTH = 0x10_0000


def copy_struct_from_user(proc: Process, uptr: int, usize: int,
                          struct: type[ctypes.Structure]) -> Any:
    """copy_struct_from_user: ``usize`` user bytes into ``struct``, zero-extended; bytes past
    the kernel's struct must be zero (E2BIG); a bad pointer EFAULT."""
    ksize = ctypes.sizeof(struct)
    data = UserArg(proc, uptr).read(min(usize, ksize)) if usize else b""
    if usize > ksize and any(UserArg(proc, uptr + ksize).read(usize - ksize)):
        raise kerr(errno.E2BIG, f"copy_struct_from_user: non-zero bytes past the kernel's "
                   f"{ksize}-byte {struct.__name__}")
    return struct.from_buffer_copy(data.ljust(ksize, b"\0"))


def offsetofend(struct: type[ctypes.Structure], field: str) -> int:
    f = getattr(struct, field)
    return int(f.offset + f.size)


class UserData:
    """struct iommu_user_data: a driver-specific blob in user memory."""

    def __init__(self, proc: Process, type_: int, uptr: int, length: int) -> None:
        self.proc, self.type, self.uptr, self.len = proc, type_, uptr, length

    def copy(self, struct: type[ctypes.Structure], data_type: int, min_last: str) -> Any:
        """iommu_copy_struct_from_user: type mismatch or short EINVAL, then the copy."""
        if self.type != data_type:
            raise kerr(errno.EINVAL, f"iommu_copy_struct_from_user: data type {self.type:#x} "
                       f"is not {data_type:#x}")
        if self.len < offsetofend(struct, min_last):
            raise kerr(errno.EINVAL, f"iommu_copy_struct_from_user: {self.len} bytes, below "
                       f"the minimum {offsetofend(struct, min_last)}")
        return copy_struct_from_user(self.proc, self.uptr, self.len, struct)


class UserDataArray:
    """struct iommu_user_data_array: ``entry_num`` entries of ``entry_len`` bytes; the driver
    writes back in ``entry_num`` how many it handled."""

    def __init__(self, proc: Process, type_: int, uptr: int, entry_len: int,
                 entry_num: int) -> None:
        self.proc, self.type, self.uptr = proc, type_, uptr
        self.entry_len, self.entry_num = entry_len, entry_num

    def copy_entry(self, struct: type[ctypes.Structure], data_type: int, index: int,
                   min_last: str) -> Any:
        """iommu_copy_struct_from_user_array (include/linux/iommu.h): entry ``index``. A
        wrong type, or an entry length below the minimum or above the kernel's struct, is
        EINVAL (__iommu_copy_struct_from_user: ``len < min_len || data_len < len``)."""
        if self.type != data_type:
            raise kerr(errno.EINVAL, f"cache invalidation: data type {self.type:#x} is not "
                       f"{data_type:#x}")
        if not self.entry_len or self.entry_len < offsetofend(struct, min_last) \
                or self.entry_len > ctypes.sizeof(struct):
            raise kerr(errno.EINVAL, f"cache invalidation: entry_len {self.entry_len} does "
                       f"not fit {struct.__name__}")
        return copy_struct_from_user(self.proc, self.uptr + self.entry_len * index,
                                     self.entry_len, struct)

    def copy_full(self, struct: type[ctypes.Structure], data_type: int) -> list[Any]:
        """iommu_copy_struct_from_full_user_array (include/linux/iommu.h): every entry. A
        wrong type or no entries EINVAL; unlike :meth:`copy_entry` the entry length is not
        bounded by the struct: an ``entry_len`` other than its size copies entry by entry
        with copy_struct_from_user, so a shorter entry is zero-extended and a longer one is
        fine when its extra bytes are zero (E2BIG otherwise); a bad pointer EFAULT."""
        if self.type != data_type:
            raise kerr(errno.EINVAL, f"cache invalidation: data type {self.type:#x} is not "
                       f"{data_type:#x}")
        if not self.entry_num:
            raise kerr(errno.EINVAL, "cache invalidation: no entries to copy")
        return [copy_struct_from_user(self.proc, self.uptr + self.entry_len * i,
                                      self.entry_len, struct)
                for i in range(self.entry_num)]


class Device(track.Tracked):
    """A device as the iommu core sees it (struct device + dev->iommu)."""

    def __init__(self, name: str, iommu: Iommu, driver: IommuDriver, *, pasid_width: int = 0,
                 resv_regions: tuple[tuple[int, int, str], ...] = (), flags: int = 0,
                 is_pci: bool = False) -> None:
        self.name = name
        self.iommu = iommu
        self.driver = driver
        self.max_pasids = (1 << pasid_width) if pasid_width else 0
        self.resv_regions = resv_regions
        self.flags = flags
        self.is_pci = is_pci
        self.owner: Cell[Any] = Cell(None, label=f"{name}.dma_owner")
        self.owner_cnt: Cell[int] = Cell(0, label=f"{name}.owner_cnt")
        self.cache: list[int] = TrackedList([I.IOMMU_TEST_DEV_CACHE_DEFAULT]
                                            * I.MOCK_DEV_CACHE_NUM,
                                            label=f"{name}.mock_cache", atomic=True)
        self.track_init(f"device.{name}")

    def __repr__(self) -> str:
        return f"<Device {self.name}>"

    def claim_dma_owner(self, owner: Any) -> None:
        """iommu_device_claim_dma_owner: EBUSY when another owner (or the DMA API with a
        driver bound) has it; the group moves to the blocking domain."""
        cur = self.owner.get()
        if cur is not None and cur is not owner:
            raise kerr(errno.EBUSY, f"iommu_device_claim_dma_owner({self.name}): owned by "
                       f"{cur!r}")
        if cur is None:
            self.iommu.attach(self.name, self.iommu.blocked)
        self.owner.set(owner)
        self.owner_cnt.set(self.owner_cnt.get() + 1)

    def release_dma_owner(self) -> None:
        n = self.owner_cnt.get() - 1
        assert n >= 0, f"{self!r}: DMA owner released more than claimed"
        self.owner_cnt.set(n)
        if not n:
            self.owner.set(None)
            self.iommu.attach(self.name, self.iommu.blocked)


class IommuDriver:
    """struct iommu_ops with its domain and dirty ops; the defaults are a driver that
    supports nothing optional (EOPNOTSUPP)."""

    name = "none"
    pgsize = 4096

    def capable(self, dev: Device, cap: str) -> bool:
        """device_iommu_capable: "cache_coherency", "dirty_tracking"."""
        return cap == "cache_coherency"

    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int] | None:
        """ops->hw_info: (data, out type), or None when the driver has no hw_info."""
        return None

    def domain_alloc_paging(self, dev: Device, flags: int,
                            user_data: UserData | None) -> IommuDomain:
        if flags or user_data is not None:
            raise kerr(errno.EOPNOTSUPP, f"{self.name}: domain_alloc_paging_flags "
                       f"unsupported (flags {flags:#x})")
        return dev.iommu.domain("paging", pgsize=self.pgsize)

    def domain_alloc_nested(self, dev: Device, parent: IommuDomain, flags: int,
                            user_data: UserData) -> IommuDomain:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: no domain_alloc_nested")

    def domain_free(self, domain: IommuDomain) -> None:
        """ops->free: the domain's tables go (hw/iommu.py reports a later walk of them)."""
        domain.free()

    def attach_dev(self, domain: IommuDomain, dev: Device, pasid: int,
                   old: IommuDomain | None) -> None:
        """ops->attach_dev / set_dev_pasid: the driver's own checks before the hw switch."""

    def cache_invalidate_user(self, domain: IommuDomain, array: UserDataArray) -> None:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: no cache_invalidate_user")

    def has_dirty_ops(self, domain: IommuDomain) -> bool:
        return False

    def set_dirty_tracking(self, domain: IommuDomain, enable: bool) -> None:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: no dirty tracking")

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int,
                             no_clear: bool) -> list[tuple[int, int]]:
        raise kerr(errno.EOPNOTSUPP, f"{self.name}: no dirty tracking")


# ----- the test mock (selftest.c) ---------------------------------------------------------
MOCK_PAGING_FLAGS = (I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                     | I.IOMMU_HWPT_ALLOC_PASID)
MOCK_DEVICE_FLAGS = I.MOCK_FLAGS_DEVICE_NO_DIRTY | I.MOCK_FLAGS_DEVICE_PASID | (1 << 1)
#: 1 << 1 is MOCK_FLAGS_DEVICE_HUGE_IOVA (not in the uapi mirror): accepted, huge pgsize.
MOCK_FLAGS_DEVICE_HUGE_IOVA = 1 << 1
#: The leaf sizes of the AMDv1 mock format (fmt/amdv1.h amdv1pt_possible_sizes with the
#: mock's 2 KiB granule): every power of two from MOCK_PAGE_SIZE to 2^51 but 512 GiB.
MOCK_LEAF_SIZES = ((1 << 52) - I.MOCK_PAGE_SIZE) & ~(1 << 39)
#: MOCK_IOMMUPT_HUGE's pgsize_bitmap (selftest.c mock_domain_alloc_pgtable): the huge page
#: and PAGE_SIZE only, so iommu_map's calls are never split into other sizes.
MOCK_HUGE_LEAF_SIZES = I.MOCK_HUGE_PAGE_SIZE | PAGE


class MockPagingDomain(IommuDomain):
    """struct mock_iommu_domain: ``dirty_ops`` when allocated with DIRTY_TRACKING."""

    mock_dirty_ops = False


class MockNestedDomain(IommuDomain):
    """struct mock_iommu_domain_nested: ``mock_iotlb`` (MOCK_NESTED_DOMAIN_IOTLB_NUM u32s)."""

    mock_iotlb: list[int]


class MockDriver(IommuDriver):
    """The mock IOMMU driver (mock_ops, domain_nested_ops, dirty_ops)."""

    name = "iommufd_mock"
    pgsize = I.MOCK_PAGE_SIZE

    def capable(self, dev: Device, cap: str) -> bool:
        if cap == "cache_coherency":
            return True
        if cap == "dirty_tracking":
            return not dev.flags & I.MOCK_FLAGS_DEVICE_NO_DIRTY
        return False

    def hw_info(self, dev: Device, data_type: int) -> tuple[bytes, int] | None:
        if data_type not in (I.IOMMU_HW_INFO_TYPE_DEFAULT, I.IOMMU_HW_INFO_TYPE_SELFTEST):
            raise kerr(errno.EOPNOTSUPP, f"mock hw_info: type {data_type:#x} unsupported")
        info = I.iommu_test_hw_info(test_reg=I.IOMMU_HW_INFO_SELFTEST_REGVAL)
        return bytes(info), I.IOMMU_HW_INFO_TYPE_SELFTEST

    def domain_alloc_paging(self, dev: Device, flags: int,
                            user_data: UserData | None) -> IommuDomain:
        dirty = bool(flags & I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        if flags & ~MOCK_PAGING_FLAGS or (dirty and dev.flags & I.MOCK_FLAGS_DEVICE_NO_DIRTY):
            raise kerr(errno.EOPNOTSUPP, f"mock_domain_alloc_paging_flags: flags {flags:#x} "
                       f"unsupported for {dev.name}")
        pt_type = I.MOCK_IOMMUPT_DEFAULT
        if user_data is not None:
            if user_data.type not in (I.IOMMU_HWPT_DATA_SELFTEST, I.IOMMU_HWPT_DATA_NONE):
                raise kerr(errno.EOPNOTSUPP, f"mock_domain_alloc_paging_flags: data type "
                           f"{user_data.type:#x}")
            if user_data.type == I.IOMMU_HWPT_DATA_SELFTEST:
                cfg = user_data.copy(I.iommu_hwpt_selftest, I.IOMMU_HWPT_DATA_SELFTEST,
                                     "iotlb")
                pt_type = cfg.pagetable_type
        if pt_type not in (I.MOCK_IOMMUPT_DEFAULT, I.MOCK_IOMMUPT_HUGE):
            raise kerr(errno.EOPNOTSUPP, f"mock: pagetable_type {pt_type} unsupported")
        bitmap = I.MOCK_PAGE_SIZE
        if pt_type == I.MOCK_IOMMUPT_HUGE or dev.flags & MOCK_FLAGS_DEVICE_HUGE_IOVA:
            bitmap |= I.MOCK_HUGE_PAGE_SIZE
        if dev.iommu.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "mock_domain_alloc_paging_flags: kzalloc (injected)")
        dom = MockPagingDomain(dev.iommu, "paging", pgsize_bitmap=bitmap,
                               aperture=(I.MOCK_APERTURE_START, I.MOCK_APERTURE_LAST),
                               nest_parent=bool(flags & I.IOMMU_HWPT_ALLOC_NEST_PARENT))
        dom.mock_dirty_ops = dirty
        dom.leaf_sizes = MOCK_HUGE_LEAF_SIZES if pt_type == I.MOCK_IOMMUPT_HUGE else \
            MOCK_LEAF_SIZES
        return dom

    def domain_alloc_nested(self, dev: Device, parent: IommuDomain, flags: int,
                            user_data: UserData) -> IommuDomain:
        if user_data.type != I.IOMMU_HWPT_DATA_SELFTEST or flags & ~I.IOMMU_HWPT_ALLOC_PASID:
            raise kerr(errno.EOPNOTSUPP, f"mock_domain_alloc_nested: data type "
                       f"{user_data.type:#x} flags {flags:#x}")
        if parent.iommu is not dev.iommu or parent.kind != "paging" or not parent.nest_parent:
            raise kerr(errno.EINVAL, "mock_domain_alloc_nested: parent is not a mock nest "
                       "parent")
        cfg = user_data.copy(I.iommu_hwpt_selftest, I.IOMMU_HWPT_DATA_SELFTEST, "iotlb")
        if dev.iommu.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "__mock_domain_alloc_nested: kzalloc (injected)")
        dom = MockNestedDomain(dev.iommu, "nested", parent=parent)
        dom.mock_iotlb = TrackedList(
            [cfg.iotlb] * I.MOCK_NESTED_DOMAIN_IOTLB_NUM, label=f"{dom.name}.mock_iotlb",
            atomic=True)
        return dom

    def attach_dev(self, domain: IommuDomain, dev: Device, pasid: int,
                   old: IommuDomain | None) -> None:
        if self.has_dirty_ops(domain) and dev.flags & I.MOCK_FLAGS_DEVICE_NO_DIRTY:
            raise kerr(errno.EINVAL, f"mock attach: {domain.name} tracks dirty pages and "
                       f"{dev.name} cannot (MOCK_FLAGS_DEVICE_NO_DIRTY)")
        if pasid == I.IOMMU_TEST_PASID_RESERVED and old is not None:
            raise kerr(errno.ENOMEM, "mock set_dev_pasid: the selftest's designed replace "
                       f"failure at PASID {pasid}")
        mv = getattr(domain, "mock_viommu", None)
        if mv is not None and pasid == IOMMU_NO_PASID:
            mv.get_vdev_id(dev)  # mock_domain_nop_attach: ENOENT without a vDEVICE

    def cache_invalidate_user(self, domain: IommuDomain, array: UserDataArray) -> None:
        """mock_domain_cache_invalidate_user: entry by entry; ``array.entry_num`` becomes the
        number handled, also on failure."""
        assert isinstance(domain, MockNestedDomain)
        iotlb = domain.mock_iotlb
        done = 0
        try:
            if array.type != I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST:
                raise kerr(errno.EINVAL, f"mock invalidate: data type {array.type:#x}")
            for i in range(array.entry_num):
                inv = array.copy_entry(I.iommu_hwpt_invalidate_selftest,
                                       I.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, "iotlb_id")
                if inv.flags & ~I.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    raise kerr(errno.EOPNOTSUPP, f"mock invalidate: entry {i} flags "
                               f"{inv.flags:#x}")
                if inv.iotlb_id > I.MOCK_NESTED_DOMAIN_IOTLB_ID_MAX:
                    raise kerr(errno.EINVAL, f"mock invalidate: entry {i} iotlb_id "
                               f"{inv.iotlb_id}")
                if inv.flags & I.IOMMU_TEST_INVALIDATE_FLAG_ALL:
                    for j in range(len(iotlb)):
                        iotlb[j] = 0
                else:
                    iotlb[inv.iotlb_id] = 0
                done += 1
        finally:
            array.entry_num = done

    def has_dirty_ops(self, domain: IommuDomain) -> bool:
        return isinstance(domain, MockPagingDomain) and domain.mock_dirty_ops

    def set_dirty_tracking(self, domain: IommuDomain, enable: bool) -> None:
        if enable and not self.has_dirty_ops(domain):
            raise kerr(errno.EINVAL, f"mock set_dirty_tracking: {domain.name} has no dirty ops")
        domain.set_dirty_tracking(enable)

    def read_and_clear_dirty(self, domain: IommuDomain, iova: int, size: int,
                             no_clear: bool) -> list[tuple[int, int]]:
        """iommu_pt.h read_and_clear_dirty: the dirty leaves ``[iova, iova + size)`` touches,
        whole (they may start before ``iova`` or end after the range), cleared whole unless
        ``no_clear``; MOCK_DIRTY_TRACK is not looked at."""
        first, last = domain.leaf(iova), domain.leaf(iova + size - 1)
        lo = first[0] if first is not None else iova
        hi = last[1] if last is not None else iova + size
        if no_clear:
            dirty = [(s, e) for s, e, _ in domain.dirty.overlapping(lo, hi)]
        else:
            dirty = domain.read_and_clear_dirty(lo, hi - lo)
        if first is None or lo == iova:
            return dirty
        # each leaf is recorded on its own: keep the first one apart from dirty neighbours
        cut = first[1]
        return [piece for s, e in dirty
                for piece in ([(s, cut), (cut, e)] if s < cut < e else [(s, e)])]


MOCK_DRIVER = MockDriver()


def _mock_iommu(kernel: Kernel) -> Iommu:
    """The mock's one IOMMU instance (mock_iommu_device), a hw unit of this machine."""
    return Iommu(kernel.sched, kernel.phys, "mock_iommu",
                 reserved=((MOCK_SW_MSI_BASE, MOCK_SW_MSI_BASE + MOCK_SW_MSI_LENGTH - 1,
                            "msi"),))


mock_iommu = kernel_static("iommufd.mock_iommu", _mock_iommu)


def mock_dev_create(kernel: Kernel, dev_flags: int) -> Device:
    """mock_dev_create: unknown flags EINVAL; a new device "iommufd_mockN" on the mock
    IOMMU, PASID-capable (MOCK_PASID_WIDTH) with MOCK_FLAGS_DEVICE_PASID."""
    if dev_flags & ~MOCK_DEVICE_FLAGS:
        raise kerr(errno.EINVAL, f"mock_dev_create: unknown dev_flags {dev_flags:#x}")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "mock_dev_create: kzalloc (injected)")
    n = kernel.next_id("iommufd_mock_dev")
    kernel.track("iommufd_mock_dev", +1)
    width = I.MOCK_PASID_WIDTH if dev_flags & I.MOCK_FLAGS_DEVICE_PASID else 0
    return Device(f"iommufd_mock{n}", mock_iommu(kernel), MOCK_DRIVER, pasid_width=width,
                  resv_regions=((MOCK_SW_MSI_BASE, MOCK_SW_MSI_BASE + MOCK_SW_MSI_LENGTH - 1,
                                 RESV_SW_MSI),), flags=dev_flags)


def mock_dev_destroy(kernel: Kernel, dev: Device) -> None:
    """mock_dev_destroy: the device leaves the bus (its context entry goes)."""
    dev.iommu.context.pop(dev.name, None)
    kernel.track("iommufd_mock_dev", -1)
