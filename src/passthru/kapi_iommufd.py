"""passthru.kapi's iommufd part: what a scenario needs beyond the uAPI to put a device behind
an IOAS and make it do DMA (re-exported by passthru.kapi).

- :func:`iommufd_of` — the iommufd context behind an fd (drivers/iommu/iommufd/main.c);
- :func:`mock_domain` — IOMMU_TEST_OP_MOCK_DOMAIN(_FLAGS) through the uAPI: a mock device
  bound to the iommufd and attached to an IOAS or HWPT (selftest.c); returns its ids;
- :class:`MockDevice` — that device's DMA engine: reads and writes at an IOVA (optionally
  tagged with a PASID) go through the hw IOMMU unit into physical truth (hw/iommu.py), so a
  translation that outlives what it maps is caught there;
- :func:`access` — an in-kernel iommufd_access (device.c's access API, kernel/iommu/iommufd/
  access.py) attached to an IOAS, with the driver's ``unmap`` callback: what an mdev-style
  driver holds while it DMAs into pinned pages;
- :func:`phys_dma_write` — a device write to a physical address it was given (the pinned
  pages of an access), judged by physical truth;
- :func:`dmabuf_fd` — an fd for a dma-buf a scenario made (dma_buf_fd, taking over the
  export's reference);
- :func:`ioas_alloc`, :func:`map_ram` — the uAPI calls every scenario's set-up makes: an
  iommufd with an IOAS, and fresh shared anonymous memory mapped at a fixed IOVA.

Leaves out: real IOMMU drivers (the mock's is the only one until VFIO devices arrive).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

from .kernel.dma_buf import core as _dmabuf
from .kernel.iommu.iommufd.access import IommufdAccess, iommufd_access_create
from .kernel.iommu.iommufd.main import IommufdCtx
from .kernel.iommu.iommufd.selftest_mock import SelftestObj
from .uapi import iommufd as I
from .uapi import linux as L

if TYPE_CHECKING:
    from .host.sim import SimHost
    from .kernel.dma_buf.core import DmaBuf


def iommufd_of(host: SimHost, fd: int) -> IommufdCtx:
    """The iommufd context behind ``fd`` (TypeError for another kind of file)."""
    f = host.proc.lookup_fd(fd)
    if not isinstance(f, IommufdCtx):
        raise TypeError(f"fd {fd} is a {f.kind}, not an iommufd")
    return f


def mock_domain(host: SimHost, fd: int, pt_id: int, flags: int = 0) -> tuple[int, int, int]:
    """A mock device attached to IOAS or HWPT ``pt_id``: (stdev_id, hwpt_id, idev_id).
    ``flags`` are MOCK_FLAGS_DEVICE_* (PASID support, no dirty tracking)."""
    cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), id=pt_id)
    if flags:
        cmd.op = I.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS
        cmd.mock_domain_flags.dev_flags = flags
        host.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
        out = cmd.mock_domain_flags
    else:
        cmd.op = I.IOMMU_TEST_OP_MOCK_DOMAIN
        host.ioctl(fd, I.IOMMU_TEST_CMD, cmd)
        out = cmd.mock_domain
    return int(out.out_stdev_id), int(out.out_hwpt_id), int(out.out_idev_id)


class MockDevice:
    """The DMA engine of the mock device ``stdev_id`` of iommufd ``fd``: each access is one
    translation through the device's IOMMU unit (its context or PASID entry) into physical
    truth. A fault returns None (it is logged; a write is dropped)."""

    def __init__(self, host: SimHost, fd: int, stdev_id: int) -> None:
        obj = iommufd_of(host, fd).objects.get(stdev_id)
        if not isinstance(obj, SelftestObj) or obj.mdev is None:
            raise TypeError(f"object {stdev_id} of fd {fd} is not a mock device")
        self.dev = obj.mdev
        self.name = obj.mdev.name
        self.iommu = obj.mdev.iommu

    def read(self, iova: int, n: int, pasid: int | None = None) -> bytes | None:
        return self.iommu.dma(self.name, iova, n, False, pasid=pasid)

    def write(self, iova: int, data: bytes, pasid: int | None = None) -> bytes | None:
        return self.iommu.dma(self.name, iova, len(data), True, data, pasid=pasid)


class _AccessOps:
    def __init__(self, unmap: Callable[[int, int], None]) -> None:
        self.needs_pin_pages = True
        self._unmap = unmap

    def unmap(self, iova: int, length: int) -> None:
        self._unmap(iova, length)


def access(host: SimHost, fd: int, ioas_id: int,
           unmap: Callable[[int, int], None]) -> IommufdAccess:
    """iommufd_access_create + iommufd_access_attach: an in-kernel access to IOAS
    ``ioas_id`` whose driver's ``unmap(iova, length)`` must drop its pins in that range
    (and stop its DMA there first). ``pin_pages(iova, length, 0)`` gives physical extents;
    ``unpin_pages``; ``destroy_user()`` at the end."""
    acc = iommufd_access_create(iommufd_of(host, fd), _AccessOps(unmap))
    try:
        acc.attach(ioas_id)
    except OSError:
        acc.destroy_user()
        raise
    return acc


def phys_dma_write(host: SimHost, addr: int, data: bytes, dev: str) -> None:
    """Device ``dev`` writes ``data`` at physical ``addr`` (a pinned page it was given):
    judged by physical truth like every access."""
    host.kernel.phys.write(addr, data, f"dma:{dev}")


def dmabuf_fd(host: SimHost, buf: DmaBuf) -> int:
    """dma_buf_fd: an fd of ``host``'s process for ``buf``, holding the reference the caller
    had (the export's, for a buffer a scenario just made): closing the fd drops it."""
    return int(_dmabuf.dma_buf_fd(host.proc, buf, 0))


def ioas_alloc(host: SimHost) -> tuple[int, int]:
    """Open /dev/iommu and IOMMU_IOAS_ALLOC: (iommufd fd, IOAS id)."""
    fd = host.open("/dev/iommu", L.O_RDWR)
    a = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
    host.ioctl(fd, I.IOMMU_IOAS_ALLOC, a)
    return fd, int(a.out_ioas_id)


def map_ram(host: SimHost, fd: int, ioas: int, iova: int, length: int) -> int:
    """``length`` bytes of fresh shared anonymous memory, IOAS_MAPped read-write at ``iova``
    (FIXED_IOVA); its user address."""
    va = host.mmap(0, length, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS,
                   -1, 0)
    host.ioctl(fd, I.IOMMU_IOAS_MAP, I.iommu_ioas_map(
        size=ctypes.sizeof(I.iommu_ioas_map), ioas_id=ioas, user_va=va, length=length,
        iova=iova, flags=I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
        | I.IOMMU_IOAS_MAP_FIXED_IOVA))
    return int(va)


__all__ = ["MockDevice", "access", "dmabuf_fd", "ioas_alloc", "iommufd_of", "map_ram",
           "mock_domain", "phys_dma_write"]
