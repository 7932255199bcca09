"""fail_nth over iommufd's ioctl paths (tools/testing/selftests/iommu/iommufd_fail_nth.c): each
call is made to fail at every fault point in turn; a failed call leaves the objects, areas,
pins, memlock charges and live objects as they were, and nothing leaks."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
from iommufd_state import sweep

from passthru import SimHost
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
