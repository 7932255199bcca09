"""iommufd devices and HWPTs (kernel/iommu/iommufd/device.py, hw_pagetable.py, driver.py,
selftest_mock.py): the kernel-internal bind/attach/replace/detach API VFIO uses, the mock's
IOMMU_TEST_CMD ops, pinning tied to the first and last domain of an IOAS, and device DMA
through the hw IOMMU reaching the mapped user memory."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru import SimHost
from passthru.kernel.iommu.iommufd import device as D
from passthru.kernel.iommu.iommufd.driver import mock_dev_create, mock_dev_destroy
from passthru.kernel.iommu.iommufd.hw_pagetable import HwptPaging
from passthru.kernel.iommu.iommufd.ioas import Ioas
from passthru.kernel.iommu.iommufd.main import IommufdCtx
from passthru.kernel.mm import mlock
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
START = I.MOCK_APERTURE_START
RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE


def _errno(fn, *a) -> int:
    with pytest.raises(OSError) as e:
        fn(*a)
    return e.value.errno


class Env:
    def __init__(self) -> None:
        self.h = SimHost()
        self.fd = self.h.open("/dev/iommu", L.O_RDWR)
        self.ictx: IommufdCtx = self.h.proc.fds[self.fd]  # type: ignore[assignment]

    def ioctl(self, req: int, cmd) -> None:  # type: ignore[no-untyped-def]
        self.h.ioctl(self.fd, req, cmd)

    def ioas(self) -> int:
        c = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        self.ioctl(I.IOMMU_IOAS_ALLOC, c)
        return c.out_ioas_id

    def map(self, ioas: int, va: int, length: int, iova: int) -> None:
        c = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map), ioas_id=ioas, user_va=va,
                             length=length, iova=iova,
                             flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA)
        self.ioctl(I.IOMMU_IOAS_MAP, c)

    def test_cmd(self, op: int, oid: int, member: str | None = None, **kw: int):  # type: ignore[no-untyped-def]
        c = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), op=op, id=oid)
        for k, v in kw.items():
            setattr(getattr(c, member), k, v)  # type: ignore[arg-type]
        self.ioctl(I.IOMMU_TEST_CMD, c)
        return c

    def mock_domain(self, pt_id: int) -> tuple[int, int, int]:
        c = self.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN, pt_id).mock_domain
        return c.out_stdev_id, c.out_hwpt_id, c.out_idev_id

    def destroy(self, oid: int) -> None:
        self.ioctl(I.IOMMU_DESTROY, I.iommu_destroy(size=ctypes.sizeof(I.iommu_destroy),
                                                     id=oid))

    def alignment(self, ioas: int) -> tuple[int, list[tuple[int, int]]]:
        arr = self.h.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE,
                          L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        c = I.iommu_ioas_iova_ranges(size=ctypes.sizeof(I.iommu_ioas_iova_ranges),
                                     ioas_id=ioas, num_iovas=8, allowed_iovas=arr)
        self.ioctl(I.IOMMU_IOAS_IOVA_RANGES, c)
        rs = (I.iommu_iova_range * c.num_iovas).from_buffer_copy(
            self.h.peek(arr, 16 * c.num_iovas))
        return c.out_iova_alignment, [(r.start, r.last) for r in rs]

    def buf(self, n: int) -> int:
        va = self.h.mmap(0, n, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS,
                         -1, 0)
        self.h.poke(va, b"\x11" * n)
        return va

    def pins(self, va: int, n: int) -> list[int]:
        mm = self.h.proc.mm
        mm.mmap_lock.down_read()
        try:
            pieces = mm.resolve(va, n, False)
        finally:
            mm.mmap_lock.up_read()
        pins = self.h.kernel.phys.pins
        return sorted({v for s, e, p in pieces for _, _, v in pins.overlapping(p, p + e - s)}
                      | ({0} if any(pins.gaps(p, p + e - s) for s, e, p in pieces) else set()))

    def ioas_obj(self, oid: int) -> Ioas:
        obj = self.ictx.objects[oid]
        assert isinstance(obj, Ioas)
        return obj


def test_kernel_api_attach_detach_replace() -> None:
    env = Env()
    k = env.h.kernel
    a, b = env.ioas(), env.ioas()
    dev = mock_dev_create(k, 0)
    idev = D.iommufd_device_bind(env.ictx, dev)
    assert dev.iommu.domain_of(dev.name) is dev.iommu.blocked  # bound: DMA blocked
    h1 = D.iommufd_device_attach(idev, None, a)
    hw = env.ictx.objects[h1]
    assert isinstance(hw, HwptPaging) and hw.auto_domain and hw.ioas.id == a
    assert dev.iommu.domain_of(dev.name) is hw.domain
    assert _errno(D.iommufd_device_attach, idev, None, a) == errno.EBUSY
    # replace to another IOAS: a new auto domain, the old one goes with its last device
    h2 = D.iommufd_device_replace(idev, None, b)
    assert h2 != h1 and h1 not in env.ictx.objects
    assert D.iommufd_device_replace(idev, None, h2) == h2  # same HWPT: nothing
    assert _errno(D.iommufd_device_replace, idev, None, 9999) == errno.ENOENT
    assert _errno(D.iommufd_device_replace, idev, None, idev.id) == errno.EINVAL
    assert _errno(D.iommufd_device_replace, idev, 5, a) == errno.EINVAL  # nothing at PASID 5
    D.iommufd_device_detach(idev, None)
    assert h2 not in env.ictx.objects
    assert dev.iommu.domain_of(dev.name) is dev.iommu.blocked
    D.iommufd_device_detach(idev, None)  # nothing attached: no error
    D.iommufd_device_unbind(idev)
    mock_dev_destroy(k, dev)
    env.h.exit()
    assert env.h.leaks() == []


def test_second_device_shares_the_auto_domain_and_ebusy_ioas() -> None:
    env = Env()
    ioas = env.ioas()
    s1, h1, _ = env.mock_domain(ioas)
    s2, h2, _ = env.mock_domain(ioas)
    assert h1 == h2  # the compatible auto domain is reused
    assert _errno(env.destroy, ioas) == errno.EBUSY
    assert _errno(env.destroy, h1) == errno.EBUSY
    env.destroy(s1)
    assert h1 in env.ictx.objects
    env.destroy(s2)
    assert h1 not in env.ictx.objects  # gone with its last device
    env.destroy(ioas)


def test_alignment_and_aperture_after_mock_attach() -> None:
    env = Env()
    ioas = env.ioas()
    assert env.alignment(ioas) == (1, [(0, (1 << 64) - 1)])
    stdev, _, _ = env.mock_domain(ioas)
    align, ranges = env.alignment(ioas)
    assert align == I.MOCK_PAGE_SIZE
    assert ranges == [(I.MOCK_APERTURE_START, I.MOCK_APERTURE_LAST)]
    env.destroy(stdev)
    assert env.alignment(ioas) == (1, [(0, (1 << 64) - 1)])


def test_pins_follow_first_and_last_domain_and_check_map() -> None:
    env = Env()
    ioas = env.ioas()
    va = env.buf(4 * PAGE)
    env.map(ioas, va, 4 * PAGE, START)
    assert env.pins(va, 4 * PAGE) == [0]  # lazy: no domain yet
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 0
    s1, h1, _ = env.mock_domain(ioas)
    assert env.pins(va, 4 * PAGE) == [1]
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 4
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_REFS, 0, "check_refs", length=4 * PAGE, uptr=va,
                 refs=1)
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, h1, "check_map", iova=START,
                 length=4 * PAGE, uptr=va)
    with pytest.raises(OSError) as e:  # shifted by one mock page: not the same pages
        env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, h1, "check_map", iova=START,
                     length=2 * PAGE, uptr=va + I.MOCK_PAGE_SIZE)
    assert e.value.errno == errno.EINVAL
    hw2 = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=0, pt_id=ioas)
    hw2.dev_id = env.ictx.objects[s1].idev.id  # type: ignore[union-attr]
    env.ioctl(I.IOMMU_HWPT_ALLOC, hw2)  # a second domain adds no pins
    assert env.pins(va, 4 * PAGE) == [1]
    env.test_cmd(I.IOMMU_TEST_OP_MD_CHECK_MAP, hw2.out_hwpt_id, "check_map", iova=START,
                 length=4 * PAGE, uptr=va)
    env.destroy(hw2.out_hwpt_id)
    env.destroy(s1)  # the last domain: unpinned, uncharged
    assert env.pins(va, 4 * PAGE) == [0]
    assert mlock.charged(env.h.kernel, env.h.proc)[0] == 0


def test_dma_through_the_mock_device_reaches_user_memory() -> None:
    env = Env()
    ioas = env.ioas()
    va = env.buf(2 * PAGE)
    env.map(ioas, va, 2 * PAGE, START)
    stdev, _, _ = env.mock_domain(ioas)
    sobj = env.ictx.objects[stdev]
    dev = sobj.mdev  # type: ignore[union-attr]
    assert dev is not None
    out = dev.iommu.dma(dev.name, START + PAGE + 8, 5, True, b"hello", expect_ok=True)
    assert out == b""
    assert env.h.peek(va + PAGE + 8, 5) == b"hello"
    assert dev.iommu.dma(dev.name, START, 4, False) == b"\x11" * 4
    # outside the IOAS mapping: a fault, nothing written
    assert dev.iommu.dma(dev.name, START + 2 * PAGE, 4, True, b"nope") is None
    env.destroy(stdev)
    assert dev.iommu.dma(dev.name, START, 4, False) is None  # detached: blocked


def test_replace_through_mock_ops_and_hwpt_alloc_errors() -> None:
    env = Env()
    ioas = env.ioas()
    stdev, h1, idev = env.mock_domain(ioas)
    c = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas,
                           flags=I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    env.ioctl(I.IOMMU_HWPT_ALLOC, c)
    parent = c.out_hwpt_id
    c.flags = 1 << 30
    assert _errno(env.ioctl, I.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP
    c.flags, c.pt_id = 0, h1  # an auto domain is no nest parent
    assert _errno(env.ioctl, I.IOMMU_HWPT_ALLOC, c) == errno.EOPNOTSUPP  # no user data
    r = env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, "mock_domain_replace",
                     pt_id=parent)
    assert r.mock_domain_replace.pt_id == parent
    assert h1 not in env.ictx.objects
    assert _errno(env.destroy, parent) == errno.EBUSY
    r = env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, "mock_domain_replace",
                     pt_id=ioas)
    env.destroy(parent)
    assert env.ictx.objects[r.mock_domain_replace.pt_id].type == "HWPT_PAGING"


def test_get_hw_info_and_add_reserved() -> None:
    env = Env()
    ioas = env.ioas()
    _, _, idev = env.mock_domain(ioas)
    arr = env.buf(PAGE)
    c = I.iommu_hw_info(size=ctypes.sizeof(I.iommu_hw_info), dev_id=idev, data_len=16,
                        data_uptr=arr)
    env.ioctl(I.IOMMU_GET_HW_INFO, c)
    info = I.iommu_test_hw_info.from_buffer_copy(env.h.peek(arr, 8))
    assert info.test_reg == I.IOMMU_HW_INFO_SELFTEST_REGVAL
    assert env.h.peek(arr + 8, 8) == bytes(8)  # trailing bytes zeroed
    assert c.data_len == 8 and c.out_data_type == I.IOMMU_HW_INFO_TYPE_SELFTEST
    assert c.out_capabilities & I.IOMMU_HW_CAP_DIRTY_TRACKING
    assert c.out_max_pasid_log2 == 0
    c.flags = 2
    assert _errno(env.ioctl, I.IOMMU_GET_HW_INFO, c) == errno.EOPNOTSUPP
    ioas2 = env.ioas()
    env.test_cmd(I.IOMMU_TEST_OP_ADD_RESERVED, ioas2, "add_reserved", start=PAGE,
                 length=PAGE)
    assert env.alignment(ioas2)[1] == [(0, PAGE - 1), (2 * PAGE, (1 << 64) - 1)]


def test_close_with_devices_attached_leaves_nothing() -> None:
    env = Env()
    ioas = env.ioas()
    va = env.buf(2 * PAGE)
    env.map(ioas, va, 2 * PAGE, START)
    _, h1, idev = env.mock_domain(ioas)
    env.mock_domain(h1)
    env.test_cmd(I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, ioas, "mock_domain_flags",
                 dev_flags=I.MOCK_FLAGS_DEVICE_PASID)
    assert env.pins(va, 2 * PAGE) == [1]
    env.h.close(env.fd)
    assert env.pins(va, 2 * PAGE) == [0]
    env.h.exit()
    assert env.h.leaks() == []
