"""fail_nth over iommufd's ioctl paths (tools/testing/selftests/iommu/iommufd_fail_nth.c): each
call is made to fail at every fault point in turn; a failed call leaves the objects, areas,
pins, memlock charges and live objects as they were, and nothing leaks."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from iommufd_state import sweep

from passthru import SimHost
from passthru.kapi import mock_domain
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
U64_MAX = (1 << 64) - 1


def sz(cls: type[ctypes.Structure]) -> int:
    return ctypes.sizeof(cls)


class Ctx:
    """An iommufd with one IOAS and a 64 KiB anonymous buffer."""

    def __init__(self, h: SimHost, mapped: bool = False) -> None:
        self.fd = h.open("/dev/iommu", L.O_RDWR)
        a = I.iommu_ioas_alloc(size=sz(I.iommu_ioas_alloc))
        h.ioctl(self.fd, I.IOMMU_IOAS_ALLOC, a)
        self.ioas = a.out_ioas_id
        self.buf = h.mmap(0, 16 * PAGE, L.PROT_READ | L.PROT_WRITE,
                          L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        h.poke(self.buf, b"\x5a" * 16 * PAGE)
        if mapped:
            self.map(h, 0x100000, 4 * PAGE)

    def map(self, h: SimHost, iova: int, length: int, ioas: int | None = None) -> int:
        m = I.iommu_ioas_map(size=sz(I.iommu_ioas_map), ioas_id=ioas or self.ioas,
                             flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA, user_va=self.buf,
                             length=length, iova=iova)
        h.ioctl(self.fd, I.IOMMU_IOAS_MAP, m)
        return int(m.iova)


def _ioas_alloc(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_IOAS_ALLOC, I.iommu_ioas_alloc(size=sz(I.iommu_ioas_alloc)))


def _map(h: SimHost, c: Ctx) -> None:
    c.map(h, 0x200000, 8 * PAGE)


def _map_auto(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_IOAS_MAP, I.iommu_ioas_map(
        size=sz(I.iommu_ioas_map), ioas_id=c.ioas, flags=RW, user_va=c.buf, length=4 * PAGE))


def _map_file(h: SimHost, c: Ctx) -> None:
    mfd = h.memfd_create("fail-nth", 0)
    h.ftruncate(mfd, 8 * PAGE)
    try:
        h.ioctl(c.fd, I.IOMMU_IOAS_MAP_FILE, I.iommu_ioas_map_file(
            size=sz(I.iommu_ioas_map_file), ioas_id=c.ioas, flags=RW, fd=mfd, start=0,
            length=8 * PAGE))
    finally:
        h.close(mfd)


def _copy(h: SimHost, c: Ctx) -> None:
    a = I.iommu_ioas_alloc(size=sz(I.iommu_ioas_alloc))
    h.ioctl(c.fd, I.IOMMU_IOAS_ALLOC, a)
    try:
        h.ioctl(c.fd, I.IOMMU_IOAS_COPY, I.iommu_ioas_copy(
            size=sz(I.iommu_ioas_copy), flags=RW, dst_ioas_id=a.out_ioas_id,
            src_ioas_id=c.ioas, length=4 * PAGE, src_iova=0x100000))
    except OSError:
        h.ioctl(c.fd, I.IOMMU_DESTROY, I.iommu_destroy(size=8, id=a.out_ioas_id))
        raise


def _unmap(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
        size=sz(I.iommu_ioas_unmap), ioas_id=c.ioas, iova=0x100000, length=4 * PAGE))


def _unmap_all(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
        size=sz(I.iommu_ioas_unmap), ioas_id=c.ioas, iova=0, length=U64_MAX))


def _allow_iovas(h: SimHost, c: Ctx) -> None:
    ranges = (I.iommu_iova_range * 2)(I.iommu_iova_range(start=0x10000000, last=0x1fffffff),
                                      I.iommu_iova_range(start=0x40000000, last=0x4fffffff))
    h.poke(c.buf, bytes(ranges))
    h.ioctl(c.fd, I.IOMMU_IOAS_ALLOW_IOVAS, I.iommu_ioas_allow_iovas(
        size=sz(I.iommu_ioas_allow_iovas), ioas_id=c.ioas, num_iovas=2, allowed_iovas=c.buf))


def _iova_ranges(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_IOAS_IOVA_RANGES, I.iommu_ioas_iova_ranges(
        size=sz(I.iommu_ioas_iova_ranges), ioas_id=c.ioas, num_iovas=4,
        allowed_iovas=c.buf))


def _destroy(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_DESTROY, I.iommu_destroy(size=8, id=c.ioas))


def _option(h: SimHost, c: Ctx) -> None:
    h.ioctl(c.fd, I.IOMMU_OPTION, I.iommu_option(
        size=sz(I.iommu_option), option_id=I.IOMMU_OPTION_HUGE_PAGES,
        op=I.IOMMU_OPTION_OP_SET, object_id=c.ioas, val64=0))


PATHS: dict[str, tuple[bool, Any]] = {
    "ioas_alloc": (False, _ioas_alloc),
    "map_fixed": (False, _map),
    "map_auto": (False, _map_auto),
    "map_file": (False, _map_file),
    "copy": (True, _copy),
    "unmap": (True, _unmap),
    "unmap_all": (True, _unmap_all),
    "allow_iovas": (False, _allow_iovas),
    "iova_ranges": (False, _iova_ranges),
    "destroy": (True, _destroy),
    "option_huge_pages": (False, _option),
}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_fail_nth_ioas_path(name: str) -> None:
    mapped, call = PATHS[name]
    passed = sweep(lambda h: Ctx(h, mapped), call)
    # Every path but DESTROY (iommufd_object_remove neither allocates nor looks up through
    # iommufd_get_object) passes a fault point: an allocation or the object lookup.
    assert passed >= (0 if name == "destroy" else 1)


def test_open_of_dev_iommu_fails_cleanly() -> None:
    h = SimHost()
    h.sched.fail_nth = frozenset({h.sched.faults_seen + 1})
    with pytest.raises(OSError) as e:
        h.open("/dev/iommu", L.O_RDWR)
    assert e.value.errno == 12
    h.sched.fail_nth = frozenset()
    assert h.proc.fds == {}
    h.exit()
    assert h.leaks() == []


# ----- the other object paths: devices, HWPTs, vIOMMU objects, accesses, dma-bufs ----------
class Dev(Ctx):
    """Ctx plus a mock device (PASID-capable) on the IOAS, a nest-parent HWPT and a
    vIOMMU over it, and the area mapped."""

    def __init__(self, h: SimHost) -> None:
        super().__init__(h)
        self.map(h, I.MOCK_APERTURE_START, 4 * PAGE)  # inside the mock domain's aperture
        self.stdev, self.hwpt, self.idev = mock_domain(h, self.fd, self.ioas,
                                                       I.MOCK_FLAGS_DEVICE_PASID)
        self.parent = self.hwpt_alloc(h, self.ioas, I.IOMMU_HWPT_ALLOC_NEST_PARENT
                                      | I.IOMMU_HWPT_ALLOC_PASID)
        # The RID on the PASID-capable stage 2, so PASIDs may be attached.
        self.test_cmd(h, I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.stdev, "mock_domain_replace",
                      pt_id=self.parent)
        v = I.iommu_viommu_alloc(size=sz(I.iommu_viommu_alloc), type=I.IOMMU_VIOMMU_TYPE_SELFTEST,
                                 dev_id=self.idev, hwpt_id=self.parent)
        h.ioctl(self.fd, I.IOMMU_VIOMMU_ALLOC, v)
        self.viommu = int(v.out_viommu_id)
        self.dirty_hwpt = self.hwpt_alloc(h, self.ioas, I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        self.nested_pasid = self.hwpt_alloc(h, self.parent, I.IOMMU_HWPT_ALLOC_PASID,
                                            nested=True)

    def hwpt_alloc(self, h: SimHost, pt_id: int, flags: int = 0, nested: bool = False) -> int:
        kw: dict[str, Any] = {}
        if nested:
            data = I.iommu_hwpt_selftest(iotlb=I.IOMMU_TEST_IOTLB_DEFAULT)
            h.poke(self.buf + 8 * PAGE, bytes(data))
            kw = dict(data_type=I.IOMMU_HWPT_DATA_SELFTEST, data_len=sz(I.iommu_hwpt_selftest),
                      data_uptr=self.buf + 8 * PAGE)
        a = I.iommu_hwpt_alloc(size=sz(I.iommu_hwpt_alloc), dev_id=self.idev, pt_id=pt_id,
                               flags=flags, **kw)
        h.ioctl(self.fd, I.IOMMU_HWPT_ALLOC, a)
        return int(a.out_hwpt_id)

    def test_cmd(self, h: SimHost, op: int, obj: int, member: str = "", **f: int) -> Any:
        c = I.iommu_test_cmd(size=sz(I.iommu_test_cmd), op=op, id=obj)
        for k, v in f.items():
            setattr(getattr(c, member), k, v)
        return h.ioctl(self.fd, I.IOMMU_TEST_CMD, c), c


def _mock_domain(h: SimHost, c: Dev) -> None:
    c.test_cmd(h, I.IOMMU_TEST_OP_MOCK_DOMAIN, c.ioas)


def _mock_domain_replace(h: SimHost, c: Dev) -> None:
    c.test_cmd(h, I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, c.stdev, "mock_domain_replace",
               pt_id=c.dirty_hwpt)


def _hwpt_paging(h: SimHost, c: Dev) -> None:
    c.hwpt_alloc(h, c.ioas, I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)


def _hwpt_nested(h: SimHost, c: Dev) -> None:
    c.hwpt_alloc(h, c.parent, nested=True)


def _hwpt_nested_on_viommu(h: SimHost, c: Dev) -> None:
    c.hwpt_alloc(h, c.viommu, nested=True)


def _get_hw_info(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_GET_HW_INFO, I.iommu_hw_info(
        size=sz(I.iommu_hw_info), dev_id=c.idev, data_len=16, data_uptr=c.buf + 9 * PAGE))


def _dirty(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_HWPT_SET_DIRTY_TRACKING, I.iommu_hwpt_set_dirty_tracking(
        size=sz(I.iommu_hwpt_set_dirty_tracking), hwpt_id=c.dirty_hwpt,
        flags=I.IOMMU_HWPT_DIRTY_TRACKING_ENABLE))


def _viommu(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_VIOMMU_ALLOC, I.iommu_viommu_alloc(
        size=sz(I.iommu_viommu_alloc), type=I.IOMMU_VIOMMU_TYPE_SELFTEST, dev_id=c.idev,
        hwpt_id=c.parent))


def _vdevice(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_VDEVICE_ALLOC, I.iommu_vdevice_alloc(
        size=sz(I.iommu_vdevice_alloc), viommu_id=c.viommu, dev_id=c.idev, virt_id=0x99))


def _veventq(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_VEVENTQ_ALLOC, I.iommu_veventq_alloc(
        size=sz(I.iommu_veventq_alloc), viommu_id=c.viommu, type=I.IOMMU_VEVENTQ_TYPE_SELFTEST,
        veventq_depth=2))


def _fault_queue(h: SimHost, c: Dev) -> None:
    h.ioctl(c.fd, I.IOMMU_FAULT_QUEUE_ALLOC, I.iommu_fault_alloc(size=sz(I.iommu_fault_alloc)))


def _pasid_attach(h: SimHost, c: Dev) -> None:
    c.test_cmd(h, I.IOMMU_TEST_OP_PASID_ATTACH, c.stdev, "pasid_attach", pasid=0x7F,
               pt_id=c.nested_pasid)


def _create_access(h: SimHost, c: Dev) -> None:
    c.test_cmd(h, I.IOMMU_TEST_OP_CREATE_ACCESS, c.ioas, "create_access",
               flags=I.MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)


def _dmabuf_map_file(h: SimHost, c: Dev) -> None:
    dfd, _ = c.test_cmd(h, I.IOMMU_TEST_OP_DMABUF_GET, 0, "dmabuf_get", length=2 * PAGE)
    try:
        h.ioctl(c.fd, I.IOMMU_IOAS_MAP_FILE, I.iommu_ioas_map_file(
            size=sz(I.iommu_ioas_map_file), ioas_id=c.ioas, flags=RW, fd=dfd, start=0,
            length=2 * PAGE))
    finally:
        h.close(dfd)


def _vfio_compat_map(h: SimHost, c: Dev) -> None:
    from passthru.uapi import vfio as V

    h.ioctl(c.fd, I.IOMMU_VFIO_IOAS, I.iommu_vfio_ioas(
        size=sz(I.iommu_vfio_ioas), ioas_id=c.ioas, op=I.IOMMU_VFIO_IOAS_SET))
    h.ioctl(c.fd, V.VFIO_IOMMU_MAP_DMA, V.vfio_iommu_type1_dma_map(
        argsz=sz(V.vfio_iommu_type1_dma_map), flags=V.VFIO_DMA_MAP_FLAG_READ,
        vaddr=c.buf, size=4 * PAGE, iova=0x2000000))


DEV_PATHS: dict[str, Any] = {
    "mock_domain": _mock_domain,
    "mock_domain_replace": _mock_domain_replace,
    "hwpt_alloc_paging": _hwpt_paging,
    "hwpt_alloc_nested": _hwpt_nested,
    "hwpt_alloc_nested_viommu": _hwpt_nested_on_viommu,
    "get_hw_info": _get_hw_info,
    "set_dirty_tracking": _dirty,
    "viommu_alloc": _viommu,
    "vdevice_alloc": _vdevice,
    "veventq_alloc": _veventq,
    "fault_queue_alloc": _fault_queue,
    "pasid_attach": _pasid_attach,
    "create_access": _create_access,
    "dmabuf_map_file": _dmabuf_map_file,
    "vfio_compat_map": _vfio_compat_map,
}


@pytest.mark.parametrize("name", sorted(DEV_PATHS))
def test_fail_nth_device_path(name: str) -> None:
    assert sweep(Dev, DEV_PATHS[name]) >= 1
