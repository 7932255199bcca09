"""The legacy VFIO path on QEMU's edu device, on SimHost and on the real kernel: the container
(/dev/vfio/vfio, drivers/vfio/container.c), the group (/dev/vfio/<group>, group.c) and the
type1 IOMMU backend (vfio_iommu_type1.c) — their ioctls and errnos, type1 MAP_DMA/UNMAP_DMA,
a device fd from the group, the group and the device's cdev excluding each other (where the
kernel has the cdev), and the edu's DMA through the type1 container.

The group of the edu: /dev/vfio/0 and BDF 0000:00:04.0 on SimHost's default machine; on
LinuxHost the vfio-pci device with ID 1234:11e8 found in sysfs (its iommu_group link). The
linux variant skips naming /dev/vfio/vfio or the group node when absent, or when no edu is
bound to vfio-pci.

Two rules checked here come from reading the kernel rather than from a run: container.c
returns EINVAL (``long ret = -EINVAL``) for an ioctl it passes to an IOMMU driver while none is
set, and before 6.19 type1 answers a wrapping MAP_DMA with EINVAL (after the alignment check).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest

from passthru.uapi import vfio as V
from passthru.vmm import Iommufd, Memfd, VfioContainer, VfioDevice, VfioGroup

from ._iommufd import is_linux, raises
from ._probe import PAGE
from ._vfio import edu_dma, kernel_version

CONTAINER = "/dev/vfio/vfio"
pytestmark = pytest.mark.node(CONTAINER)

SIM_GROUP, SIM_BDF = "/dev/vfio/0", "0000:00:04.0"
CDEV = "/dev/vfio/devices/vfio0"  # the edu's cdev, on SimHost and in the lane-3 guest
IOVA = 0x100000
U64_MAX = (1 << 64) - 1
RW = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE
VIABLE, CONTAINER_SET = V.VFIO_GROUP_FLAGS_VIABLE, V.VFIO_GROUP_FLAGS_CONTAINER_SET


def edu_group(host: Any) -> tuple[str, str]:
    """(group node, BDF) of the edu bound to vfio-pci; skips on LinuxHost when there is none."""
    if not is_linux(host):
        return SIM_GROUP, SIM_BDF
    root = "/sys/bus/pci/drivers/vfio-pci"
    for bdf in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        try:
            with open(f"{root}/{bdf}/vendor") as f, open(f"{root}/{bdf}/device") as g:
                ids = (int(f.read(), 16), int(g.read(), 16))
            group = os.path.basename(os.readlink(f"{root}/{bdf}/iommu_group"))
        except OSError:
            continue
        if ids == (0x1234, 0x11E8):
            node = f"/dev/vfio/{group}"
            if not os.access(node, os.R_OK | os.W_OK):
                pytest.skip(f"{node} absent or not accessible")
            return node, bdf
    pytest.skip("no edu (1234:11e8) bound to vfio-pci")


def have_cdev(host: Any) -> bool:
    """The edu's VFIO cdev and /dev/iommu are there (always on SimHost; not on a kernel
    without CONFIG_VFIO_DEVICE_CDEV, such as Debian's)."""
    return not is_linux(host) or all(os.access(n, os.R_OK | os.W_OK)
                                     for n in (CDEV, "/dev/iommu"))


@pytest.fixture
def legacy(host: Any) -> Iterator[tuple[Any, VfioContainer, VfioGroup, str]]:
    """The container and the edu's group, open, the group not yet in the container."""
    node, bdf = edu_group(host)
    with VfioContainer(host, CONTAINER) as c, VfioGroup(host, node) as g:
        yield host, c, g, bdf


@pytest.fixture
def ready(legacy: tuple[Any, VfioContainer, VfioGroup, str]
          ) -> tuple[Any, VfioContainer, VfioGroup, str]:
    """The group in the container, type1v2 set."""
    _, c, g, _ = legacy
    g.set_container(c)
    c.set_iommu(V.VFIO_TYPE1v2_IOMMU)
    return legacy


# ----- container ------------------------------------------------------------------------------
def test_container_version_extensions_and_set_iommu_without_group(legacy):
    host, c, _, _ = legacy
    assert c.api_version() == V.VFIO_API_VERSION == 0
    assert c.check_extension(V.VFIO_TYPE1_IOMMU) == 1
    assert c.check_extension(V.VFIO_TYPE1v2_IOMMU) == 1
    assert c.check_extension(99) == 0
    raises(errno.EINVAL, c.set_iommu, V.VFIO_TYPE1v2_IOMMU)  # no group yet


def test_container_ioctls_before_set_iommu_are_einval(legacy):
    host, c, _, _ = legacy
    raises(errno.EINVAL, c.ioctl, V.VFIO_IOMMU_GET_INFO,
           V.vfio_iommu_type1_info(argsz=ctypes.sizeof(V.vfio_iommu_type1_info)))
    raises(errno.EINVAL, c.map_dma, 0, IOVA, PAGE)


# ----- group ----------------------------------------------------------------------------------
def test_group_open_status_and_container_errnos(legacy):
    host, c, g, bdf = legacy
    raises(errno.EBUSY, VfioGroup, host, g.path)  # one open at a time
    assert g.status() == VIABLE
    raises(errno.EINVAL, g.ioctl, V.VFIO_GROUP_GET_STATUS, V.vfio_group_status(argsz=4))
    raises(errno.EINVAL, g.get_device, bdf)  # no container
    raises(errno.EINVAL, g.unset_container)  # none set
    raises(errno.EBADF, g.set_container, 4000)
    with Memfd(host, size=PAGE) as mfd:
        raises(errno.EBADFD, g.set_container, mfd.fd)  # not a container
    g.set_container(c)
    assert g.status() == VIABLE | CONTAINER_SET
    raises(errno.EINVAL, g.set_container, c)  # already in one
    raises(errno.EINVAL, g.get_device, bdf)  # the container has no IOMMU driver yet
    raises(errno.ENODEV, c.set_iommu, V.VFIO_SPAPR_TCE_IOMMU)
    c.set_iommu(V.VFIO_TYPE1v2_IOMMU)
    raises(errno.EINVAL, c.set_iommu, V.VFIO_TYPE1v2_IOMMU)  # set already
    g.unset_container()
    assert g.status() == VIABLE


def test_group_device_fd(ready):
    host, c, g, bdf = ready
    raises(errno.ENODEV, g.get_device, "0000:ff:1f.7")
    dev = g.get_device(bdf)
    assert dev.bound  # usable without a bind
    assert dev.config_read(0, 4) == 0x11E81234
    assert dev.region(0).read_int(0, 4) == 0x010000ED
    # BIND_IOMMUFD is for cdev fds only: EINVAL with CONFIG_VFIO_DEVICE_CDEV, ENOTTY from the
    # stub without it (Debian's 7.3 kernel has no cdev: lane 2 sees ENOTTY)
    cdev_config = os.path.isdir("/dev/vfio/devices") if is_linux(host) else True
    raises(errno.EINVAL if cdev_config else errno.ENOTTY, dev.bind, 0)
    raises(errno.ENOTTY, dev.ioctl, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
           V.vfio_device_attach_iommufd_pt(
               argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt)))  # to vfio-pci
    raises(errno.EBUSY, g.unset_container)  # a device fd is open
    if have_cdev(host):
        with Iommufd(host) as ifd, VfioDevice(host, CDEV) as cdev:  # the same device
            # the group is open: vfio_device_block_group refuses before the device's open
            # count is looked at (it would say EINVAL: open through the group already)
            raises(errno.EBUSY, cdev.bind, ifd)
    dev.close()
    g.unset_container()


def test_a_cdev_bind_and_the_group_exclude_each_other(host):
    """group.c: while the group is open a cdev bind is EBUSY (test_group_device_fd); while a
    device of the group is bound through its cdev, opening the group is EBUSY
    (cdev_device_open_cnt), until that cdev file is closed. An unbound cdev file blocks
    nothing."""
    node, _ = edu_group(host)
    if not have_cdev(host):
        pytest.skip(f"{CDEV} or /dev/iommu absent or not accessible (no VFIO cdev)")
    with Iommufd(host) as ifd, VfioDevice(host, CDEV) as cdev:
        with VfioGroup(host, node) as g:  # the cdev file is open, not bound
            assert g.status() == VIABLE
        cdev.bind(ifd)
        raises(errno.EBUSY, VfioGroup, host, node)
    with VfioGroup(host, node) as g:  # the cdev file closed: the group opens again
        assert g.status() == VIABLE


# ----- type1 ----------------------------------------------------------------------------------
def test_type1_info_and_map_errnos(ready):
    host, c, _, _ = ready
    info = V.vfio_iommu_type1_info(argsz=ctypes.sizeof(V.vfio_iommu_type1_info))
    c.ioctl(V.VFIO_IOMMU_GET_INFO, info)
    assert info.flags & V.VFIO_IOMMU_INFO_PGSIZES and info.iova_pgsizes & PAGE
    raises(errno.EINVAL, c.ioctl, V.VFIO_IOMMU_GET_INFO, V.vfio_iommu_type1_info(argsz=8))
    with Memfd(host, size=4 * PAGE) as mfd:
        va = mfd.mmap().addr
        raises(errno.EINVAL, c.map_dma, va, IOVA, 0)  # size 0
        raises(errno.EINVAL, c.map_dma, va, IOVA, PAGE, readable=False, writeable=False)
        raises(errno.EINVAL, c.map_dma, va, IOVA + 1, PAGE)  # misaligned
        raises(errno.EINVAL, c.map_dma, va + 1, IOVA, PAGE)
        c.map_dma(va, IOVA, 2 * PAGE)
        raises(errno.EEXIST, c.map_dma, va, IOVA + PAGE, 2 * PAGE)  # overlaps
        c.map_dma(va + 2 * PAGE, IOVA + 2 * PAGE, 2 * PAGE)
        # unmap: bisecting a mapping is refused (v2) and nothing goes
        raises(errno.EINVAL, c.unmap_dma, IOVA + PAGE, 2 * PAGE)
        raises(errno.EINVAL, c.unmap_dma, IOVA + 1, PAGE)
        raises(errno.EINVAL, c.unmap_dma, IOVA, PAGE, V.VFIO_DMA_UNMAP_FLAG_ALL)
        assert c.unmap_dma(IOVA + 16 * PAGE, PAGE) == 0  # nothing there: success, size 0
        assert c.unmap_dma(IOVA, 2 * PAGE) == 2 * PAGE
        assert c.unmap_dma(0, 0, V.VFIO_DMA_UNMAP_FLAG_ALL) == 2 * PAGE
        assert c.unmap_dma(0, 0, V.VFIO_DMA_UNMAP_FLAG_ALL) == 0


def test_type1_map_wrap_errno_by_version(ready):
    """An IOVA range that wraps: EINVAL (after the alignment check) before 6.19; EOVERFLOW
    from 6.19 on ("vfio/type1: sanitize for overflow using check_*_overflow()")."""
    host, c, _, _ = ready
    want = errno.EOVERFLOW if kernel_version(host) >= (6, 19) else errno.EINVAL
    with Memfd(host, size=2 * PAGE) as mfd:
        va = mfd.mmap().addr
        raises(want, c.map_dma, va, U64_MAX + 1 - PAGE, 2 * PAGE)


def test_edu_dma_round_trip_through_a_type1_container(ready):
    host, c, g, bdf = ready
    with Memfd(host, size=4 * PAGE) as mfd:
        view = mfd.mmap()
        c.map_dma(view.addr, IOVA, 4 * PAGE)
        dev = g.get_device(bdf)
        dev.set_command(memory=True, master=True)
        bar = dev.region(0)

        view.write(0, b"type1 round trip")
        edu_dma(bar, IOVA, 0x40000, 16, to_ram=False)
        edu_dma(bar, 0x40000, IOVA + 3 * PAGE, 16, to_ram=True)
        assert view.read(3 * PAGE, 16) == b"type1 round trip"
        assert c.unmap_dma(IOVA, 4 * PAGE) == 4 * PAGE
        edu_dma(bar, 0x40000, IOVA + 2 * PAGE, 16, to_ram=True)  # unmapped: the IOMMU blocks it
        assert view.read(2 * PAGE, 16) == bytes(16)
        dev.close()
