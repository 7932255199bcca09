"""Regression tests for the model bugs the iommufd fuzzer found (tests/robustness/
test_iommufd_fuzz.py): each reproducer fails on the code before its fix."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru import SimHost
from passthru.kapi import mock_domain
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE


def _setup() -> tuple[SimHost, int, int, int]:
    h = SimHost()
    fd = h.open("/dev/iommu", L.O_RDWR)
    a = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
    h.ioctl(fd, I.IOMMU_IOAS_ALLOC, a)
    _, _, idev = mock_domain(h, fd, a.out_ioas_id)
    return h, fd, int(a.out_ioas_id), idev


def test_hwpt_alloc_with_a_bad_fault_id_aborts_under_the_ioas_mutex() -> None:
    """HWPT_ALLOC of a paging HWPT with FAULT_ID_VALID and a fault_id that is no FAULT: ENOENT,
    and the abort runs with the IOAS mutex still held (no lockdep report), nothing left."""
    h, fd, ioas, idev = _setup()
    before = sorted(h.proc.fds[fd].objects)  # type: ignore[attr-defined]
    with pytest.raises(OSError) as e:
        h.ioctl(fd, I.IOMMU_HWPT_ALLOC, I.iommu_hwpt_alloc(
            size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas,
            flags=I.IOMMU_HWPT_FAULT_ID_VALID, fault_id=0))
    assert e.value.errno == errno.ENOENT
    assert h.sched.violations == []
    assert sorted(h.proc.fds[fd].objects) == before  # type: ignore[attr-defined]


def test_unmap_of_part_of_a_locked_area_is_ebusy_before_enoent() -> None:
    """A range splitting an area a HW queue locks: the kernel checks num_locks (EBUSY)
    before the split (ENOENT)."""
    h, fd, ioas, idev = _setup()
    parent = I.iommu_hwpt_alloc(size=ctypes.sizeof(I.iommu_hwpt_alloc), dev_id=idev,
                                pt_id=ioas, flags=I.IOMMU_HWPT_ALLOC_NEST_PARENT)
    h.ioctl(fd, I.IOMMU_HWPT_ALLOC, parent)
    v = I.iommu_viommu_alloc(size=ctypes.sizeof(I.iommu_viommu_alloc),
                             type=I.IOMMU_VIOMMU_TYPE_SELFTEST, dev_id=idev,
                             hwpt_id=parent.out_hwpt_id)
    h.ioctl(fd, I.IOMMU_VIOMMU_ALLOC, v)
    buf = h.mmap(0, 2 * PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    iova = I.MOCK_APERTURE_START
    h.ioctl(fd, I.IOMMU_IOAS_MAP, I.iommu_ioas_map(
        size=ctypes.sizeof(I.iommu_ioas_map), flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA,
        ioas_id=ioas, user_va=buf, length=2 * PAGE, iova=iova))
    h.ioctl(fd, I.IOMMU_HW_QUEUE_ALLOC, I.iommu_hw_queue_alloc(
        size=ctypes.sizeof(I.iommu_hw_queue_alloc), viommu_id=v.out_viommu_id,
        type=I.IOMMU_HW_QUEUE_TYPE_SELFTEST, index=0, nesting_parent_iova=iova, length=PAGE))
    with pytest.raises(OSError) as e:
        h.ioctl(fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
            size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=PAGE))
    assert e.value.errno == errno.EBUSY
