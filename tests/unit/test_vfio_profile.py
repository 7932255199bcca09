"""vfio-pci by profile: the DMA_BUF device feature arrives in 6.19 (6.18: ENOTTY, as an
unknown feature); on 6.19 and later it exports the edu's BAR0 (revoked while MSE is clear).
An export of the unimplemented BAR1 is EINVAL at get_dmabuf_phys on 6.19 and ENODEV at the
barmap check from 7.1 (``vfio_pci_dma_buf_barmap_check``); the ERR IRQ index of the
conventional-PCI edu is EINVAL until 7.3 drops the PCIe check (``vfio_pci_err_irq_pcie_only``;
no profile is 7.3 yet, so a 7.1 profile with the field cleared stands in for it)."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import replace

import pytest

from passthru import SimHost
from passthru.kernel.profile import Profile, get_profile
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

VFIO0 = "/dev/vfio/devices/vfio0"
PAGE = 4096


def _bound(profile: str | Profile) -> tuple[SimHost, int]:
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


@pytest.mark.parametrize("profile,want", [("linux-6.19", errno.EINVAL),
                                          ("linux-7.1", errno.ENODEV)])
def test_dma_buf_of_an_unimplemented_bar_by_profile(profile: str, want: int) -> None:
    h, fd = _bound(profile)
    for ranges in ([(0, PAGE)], [(0, 100)]):  # 7.1: ENODEV before the ranges' checks
        with pytest.raises(OSError) as e:
            h.ioctl(fd, V.VFIO_DEVICE_FEATURE, V.feature_dma_buf(1, ranges, L.O_RDWR))
        assert e.value.errno == want
    h.exit()
    assert h.leaks() == []


LINUX_7_3_ERR = replace(get_profile("linux-7.1"), name="linux-7.3",
                        vfio_pci_err_irq_pcie_only=False)


@pytest.mark.parametrize("profile", ["linux-6.18", "linux-7.1", LINUX_7_3_ERR],
                         ids=["linux-6.18", "linux-7.1", "pcie-check-dropped"])
def test_err_irq_info_of_a_conventional_pci_device_by_profile(profile: str | Profile) -> None:
    h, fd = _bound(profile)
    q = V.vfio_irq_info(argsz=ctypes.sizeof(V.vfio_irq_info), index=V.VFIO_PCI_ERR_IRQ_INDEX)
    if isinstance(profile, str):  # the PCIe check: the edu has no PCIe capability
        with pytest.raises(OSError) as e:
            h.ioctl(fd, V.VFIO_DEVICE_GET_IRQ_INFO, q)
        assert e.value.errno == errno.EINVAL
    else:
        h.ioctl(fd, V.VFIO_DEVICE_GET_IRQ_INFO, q)
        assert (q.flags, q.count) == (V.VFIO_IRQ_INFO_EVENTFD | V.VFIO_IRQ_INFO_NORESIZE, 1)
    h.exit()
    assert h.leaks() == []
