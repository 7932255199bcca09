"""iommufd by profile: CONFIG_IOMMUFD_TEST off makes IOMMU_TEST_CMD ENOTTY (the rest of
/dev/iommu is unchanged); before 6.19 IOAS_MAP_FILE takes no dma-buf; without THP automatic
IOVAs are only page aligned (KERNEL.md §3)."""

from __future__ import annotations

import ctypes
import dataclasses
import errno

import pytest

from passthru import SimHost
from passthru.kapi import dmabuf_fd, revocable_dmabuf
from passthru.kernel.profile import get_profile
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE


def _ioas(h: SimHost) -> tuple[int, int]:
    fd = h.open("/dev/iommu", L.O_RDWR)
    a = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
    h.ioctl(fd, I.IOMMU_IOAS_ALLOC, a)
    return fd, int(a.out_ioas_id)


def test_without_iommufd_test_the_mock_is_enotty() -> None:
    h = SimHost(dataclasses.replace(get_profile("linux-7.1"), iommufd_test=False))
    fd, ioas = _ioas(h)
    cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd),
                           op=I.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas)
    with pytest.raises(OSError) as e:
        h.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
    assert e.value.errno == errno.ENOTTY
    h2 = SimHost()  # the default kernel has the mock
    fd2, ioas2 = _ioas(h2)
    cmd.id = ioas2
    h2.ioctl(fd2, I.IOMMU_TEST_CMD, cmd)
    assert cmd.mock_domain.out_stdev_id


@pytest.mark.parametrize("profile,ok", [("linux-6.18", False), ("linux-6.19", True),
                                        ("linux-7.1", True)])
def test_map_file_of_a_dmabuf_arrives_in_6_19(profile: str, ok: bool) -> None:
    """With a (mock) domain attached the map pins at once. Before 6.19 a dma-buf is just a
    file to IOAS_MAP_FILE (pages.c iopt_alloc_file_pages takes any file): it maps while
    nothing pins, and the pin (memfd_pin_folios: not shmem) is EINVAL."""
    h = SimHost(profile)
    fd, ioas = _ioas(h)
    dfd = dmabuf_fd(h, revocable_dmabuf(h, PAGE))

    def map_file() -> I.iommu_ioas_map_file:
        m = I.iommu_ioas_map_file(size=ctypes.sizeof(I.iommu_ioas_map_file), flags=RW,
                                  ioas_id=ioas, fd=dfd, start=0, length=PAGE)
        h.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, m)
        return m

    if not ok:  # no domain yet: nothing is pinned, the map is taken
        u = I.iommu_ioas_unmap(size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=ioas,
                               iova=map_file().iova, length=PAGE)
        h.ioctl(fd, I.IOMMU_IOAS_UNMAP, u)
    cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd),
                           op=I.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas)
    h.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
    if ok:
        assert map_file().iova
    else:
        with pytest.raises(OSError) as e:
            map_file()
        assert e.value.errno == errno.EINVAL  # the pin: a dma-buf is not a memfd


@pytest.mark.parametrize("thp,first", [(True, 1 << 21), (False, PAGE)])
def test_automatic_iova_alignment_follows_thp(thp: bool, first: int) -> None:
    """The lowest IOVA allocated for a 4 MiB-aligned 4 MiB source: 2 MiB with THP (the cap of
    the alignment), PAGE_SIZE without (never 0)."""
    h = SimHost(dataclasses.replace(get_profile("linux-7.1"), thp=thp))
    fd, ioas = _ioas(h)
    buf = h.mmap(0, 8 << 20, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    base = (buf + (4 << 20) - 1) & ~((4 << 20) - 1)  # 4 MiB aligned: only THP caps it
    m = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map), flags=RW, ioas_id=ioas,
                         user_va=base, length=4 << 20)
    h.ioctl(fd, I.IOMMU_IOAS_MAP, m)
    assert m.iova == first
