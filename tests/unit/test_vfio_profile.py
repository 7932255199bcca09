"""vfio-pci by profile: the DMA_BUF device feature arrives in 6.19 (6.18: ENOTTY, as an
unknown feature); on 6.19 and later it exports the edu's BAR0 (revoked while MSE is clear)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru import SimHost
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

VFIO0 = "/dev/vfio/devices/vfio0"
PAGE = 4096


def _bound(profile: str) -> tuple[SimHost, int]:
    h = SimHost(profile)
    iommufd = h.open("/dev/iommu", L.O_RDWR)
    fd = h.open(VFIO0, L.O_RDWR)
    h.ioctl(fd, V.VFIO_DEVICE_BIND_IOMMUFD, V.vfio_device_bind_iommufd(
        argsz=ctypes.sizeof(V.vfio_device_bind_iommufd), iommufd=iommufd))
    return h, fd


@pytest.mark.parametrize("profile,ok", [("linux-6.18", False), ("linux-6.19", True),
                                        ("linux-7.1", True)])
def test_dma_buf_feature_by_profile(profile: str, ok: bool) -> None:
    h, fd = _bound(profile)
    arg = V.feature_dma_buf(V.VFIO_PCI_BAR0_REGION_INDEX, [(0, PAGE)], L.O_RDWR)
    if not ok:
        with pytest.raises(OSError) as e:
            h.ioctl(fd, V.VFIO_DEVICE_FEATURE, arg)
        assert e.value.errno == errno.ENOTTY
        return
    dfd = h.ioctl(fd, V.VFIO_DEVICE_FEATURE, arg)
    assert dfd > fd and h.proc.fds[dfd].kind == "dma-buf"
    h.close(dfd)
    h.close(fd)
    h.exit()
    assert h.leaks() == []
