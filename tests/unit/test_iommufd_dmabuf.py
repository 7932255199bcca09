"""IOAS_MAP_FILE of a dma-buf (kernel/iommu/iommufd/dmabuf.py, selftest_dmabuf.py): the
selftest's dmabuf_simple and dmabuf_revoke on SimHost, and what only the model can see —
the IOMMU's translation of a revoked area, through hw DMA (KERNEL.md §3)."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import replace
from typing import Any

import pytest

from passthru import SimHost, kapi
from passthru.hw.iommu import IOMMU_MMIO, Iommu, IommuDomain
from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma_buf import core
from passthru.kernel.dma_buf.p2p_exporter import bar_dmabuf
from passthru.kernel.mm import mlock
from passthru.kernel.profile import Profile, get_profile
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

PAGE = 4096
SIZE = 4 * PAGE
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
U64_MAX = (1 << 64) - 1
GiB = 1 << 30


def err(e: int, fn: Any, *args: Any) -> None:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == e, ei.value


class Ctx:
    """An iommufd with one IOAS and a mock dma-buf of SIZE bytes; hw domains on demand."""

    def __init__(self, profile: str | Profile = "linux-7.1", mock_buf: bool = True) -> None:
        self.h = h = SimHost(profile=profile)
        self.fd = h.open("/dev/iommu", L.O_RDWR)
        a = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        h.ioctl(self.fd, I.IOMMU_IOAS_ALLOC, a)
        self.ioas_id = a.out_ioas_id
        self.unit = Iommu(h.kernel.sched, h.kernel.phys, "mock0")
        self.domains: list[IommuDomain] = []
        self.dfd = self.get_dmabuf(SIZE) if mock_buf else -1

    @property
    def iopt(self) -> Any:
        return self.h.proc.fds[self.fd].objects[self.ioas_id].iopt

    def test_cmd(self, op: int, member: str, **kw: Any) -> int:
        cmd = I.iommu_test_cmd(size=ctypes.sizeof(I.iommu_test_cmd), op=op)
        for k, v in kw.items():
            setattr(getattr(cmd, member), k, v)
        return self.h.ioctl(self.fd, I.IOMMU_TEST_CMD, cmd)

    def get_dmabuf(self, length: int) -> int:
        return self.test_cmd(I.IOMMU_TEST_OP_DMABUF_GET, "dmabuf_get", length=length,
                             open_flags=L.O_CLOEXEC)

    def revoke(self, revoked: bool, dfd: int | None = None) -> None:
        self.test_cmd(I.IOMMU_TEST_OP_DMABUF_REVOKE, "dmabuf_revoke",
                      dmabuf_fd=self.dfd if dfd is None else dfd, revoked=int(revoked))

    def map_file(self, start: int, length: int, iova: int | None = None,
                 dfd: int | None = None) -> int:
        flags = RW | (I.IOMMU_IOAS_MAP_FIXED_IOVA if iova is not None else 0)
        cmd = I.iommu_ioas_map_file(size=ctypes.sizeof(I.iommu_ioas_map_file), flags=flags,
                                    ioas_id=self.ioas_id, fd=self.dfd if dfd is None else dfd,
                                    start=start, length=length, iova=iova or 0)
        self.h.ioctl(self.fd, I.IOMMU_IOAS_MAP_FILE, cmd)
        return int(cmd.iova)

    def unmap(self, iova: int, length: int) -> int:
        cmd = I.iommu_ioas_unmap(size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=self.ioas_id,
                                 iova=iova, length=length)
        self.h.ioctl(self.fd, I.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def add_domain(self) -> str:
        """A hw paging domain on the IOAS and a device attached to it; the device name."""
        dom = self.unit.domain()
        self.iopt.table_add_domain(dom)
        self.domains.append(dom)
        dev = f"dev{len(self.domains)}"
        self.unit.attach(dev, dom)
        return dev

    def dma_read(self, dev: str, iova: int, n: int = 16) -> bytes | None:
        return self.unit.dma(dev, iova, n, False)

    def finish(self) -> None:
        """Domains off, close everything, exit: nothing may leak."""
        for dom in self.domains:
            self.iopt.table_remove_domain(dom)
        self.h.exit()
        assert self.h.leaks() == []
        assert self.h.kernel.sched.violations == []


# ----- the selftest's dmabuf_simple and dmabuf_revoke ------------------------------------------
@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_dmabuf_simple(profile: str) -> None:
    c = Ctx(profile)
    locked = dict(mlock.locked_vm(c.h.kernel))
    err(errno.EINVAL, c.map_file, 0, 0)
    err(errno.EINVAL, c.map_file, PAGE, 0)
    err(errno.EINVAL, c.map_file, SIZE, SIZE)
    err(errno.EINVAL, c.map_file, 0, SIZE + 1)
    err(errno.EINVAL, c.map_file, PAGE, SIZE)
    assert c.unmap(0, U64_MAX) == 0  # the failures mapped nothing
    assert "dma-buf-attachment" not in c.h.kernel.live  # and left no attachment
    iova = c.map_file(0, SIZE)
    assert c.h.kernel.live["dma-buf-attachment"] == 1
    c.add_domain()
    assert dict(mlock.locked_vm(c.h.kernel)) == locked  # no pinned-page accounting
    assert c.unmap(iova, SIZE) == SIZE
    assert "dma-buf-attachment" not in c.h.kernel.live  # the last area took the attachment
    c.finish()


def test_dmabuf_pins_nothing_and_charges_nothing_without_cap_ipc_lock() -> None:
    """iopt_alloc_dmabuf_pages forces ACCOUNT_NONE ("dmabuf does not use pinned page
    accounting"): a process without CAP_IPC_LOCK and a 1-page RLIMIT_MEMLOCK maps and fills
    4 pages of a dma-buf, charging nothing; IOAS_CHANGE_PROCESS refuses a dma-buf area
    (EINVAL: only IOPT_ADDRESS_FILE). A model test: the lanes run as root."""
    c = Ctx()
    c.h.proc.caps = c.h.proc.caps - {"CAP_IPC_LOCK"}
    c.h.proc.uid, c.h.proc.rlimit_memlock = 1000, PAGE
    c.map_file(0, SIZE)
    c.add_domain()
    assert dict(mlock.locked_vm(c.h.kernel)) == {}
    err(errno.EINVAL, c.h.ioctl, c.fd, I.IOMMU_IOAS_CHANGE_PROCESS,
        I.iommu_ioas_change_process(size=ctypes.sizeof(I.iommu_ioas_change_process)))
    c.finish()


@pytest.mark.parametrize("mock_domains", [0, 1])
def test_dmabuf_revoke(mock_domains: int) -> None:
    c = Ctx()
    for _ in range(mock_domains):
        c.add_domain()
    iova = c.map_file(0, SIZE)
    c.revoke(True)
    if mock_domains:
        c.add_domain()  # a new domain while the area is revoked
    err(errno.ENODEV, c.map_file, 0, SIZE)
    c.revoke(False)
    iova2 = c.map_file(0, SIZE)
    assert iova2 != iova
    assert c.unmap(iova, SIZE) == SIZE  # userspace unmaps and maps again
    assert c.map_file(0, SIZE, iova) == iova
    c.finish()


def test_revoked_is_enodev_before_eexist() -> None:
    c = Ctx()
    iova = c.map_file(0, SIZE)
    c.revoke(True)
    err(errno.ENODEV, c.map_file, 0, SIZE, iova)
    c.revoke(False)
    err(errno.EEXIST, c.map_file, 0, SIZE, iova)
    c.finish()


# ----- the IOMMU's view (model only) --------------------------------------------------------
@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_revoke_unmaps_from_every_domain_and_unrevoke_does_not_remap(profile: str) -> None:
    c = Ctx(profile)
    d1, d2 = c.add_domain(), c.add_domain()
    iova = c.map_file(PAGE, 2 * PAGE)
    assert c.unit.dma(d1, iova, 8, True, b"\xabpayload"[:8]) == b""
    assert c.dma_read(d2, iova, 8) == b"\xabpayload"[:8]  # same memory through both
    assert all(dom.table is not None and dom.table.get(iova) is not None
               and dom.table.get(iova)[2] & IOMMU_MMIO for dom in c.domains)
    c.revoke(True)
    assert c.dma_read(d1, iova) is None and c.dma_read(d2, iova) is None
    d3 = c.add_domain()  # a domain attached after the revoke maps nothing either
    assert c.dma_read(d3, iova) is None
    c.revoke(False)
    assert all(c.dma_read(d, iova) is None for d in (d1, d2, d3))  # no automatic remap
    assert c.unmap(iova, 2 * PAGE) == 2 * PAGE
    assert c.map_file(PAGE, 2 * PAGE, iova) == iova  # a new attachment, mapped everywhere
    assert all(c.dma_read(d, iova, 8) == b"\xabpayload"[:8] for d in (d1, d2, d3))
    c.finish()


@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_revoke_twice_and_unrevoke_without_revoke(profile: str) -> None:
    """selftest.c's DMABUF_REVOKE invalidates either way (6.19 to 7.3): un-revoking a live
    buffer revokes iommufd's pages of it (iopt_revoke_notify does not ask why), though the
    buffer itself stays valid: a new map works."""
    c = Ctx(profile)
    d = c.add_domain()
    iova = c.map_file(0, SIZE)
    assert c.dma_read(d, iova) is not None
    c.revoke(False)
    assert c.dma_read(d, iova) is None
    iova2 = c.map_file(0, SIZE)
    assert c.dma_read(d, iova2) is not None
    c.revoke(True)
    c.revoke(True)
    assert c.dma_read(d, iova2) is None
    c.finish()


# ----- which exporters iommufd takes ---------------------------------------------------------
def bar_machine() -> tuple[Topology, PciFunction]:
    t = Topology(host_p2p=True)
    rp = t.add_root_port("rp1")
    gpu = t.add_function(PciFunction("gpu", "0000:02:00.0",
                                     {0: Bar(3 * GiB + (256 << 20), 64 << 20)}), rp)
    return t, gpu


def test_multi_range_buffer_is_eopnotsupp_single_range_is_mmio() -> None:
    c = Ctx(mock_buf=False)
    t, gpu = bar_machine()
    two = bar_dmabuf(c.h.kernel, t, gpu, 0, [(0, PAGE), (4 * PAGE, PAGE)])
    fd2 = core.dma_buf_fd(c.h.proc, two, L.O_CLOEXEC)
    err(errno.EOPNOTSUPP, c.map_file, 0, 2 * PAGE, None, fd2)
    one = bar_dmabuf(c.h.kernel, t, gpu, 0, [(8 * PAGE, 2 * PAGE)])
    fd1 = core.dma_buf_fd(c.h.proc, one, L.O_CLOEXEC)
    c.add_domain()
    iova = c.map_file(PAGE, PAGE, None, fd1)
    table = c.domains[0].table
    assert table is not None
    assert table.iova_to_phys(iova) == gpu.bars[0].base + 9 * PAGE
    hit = table.get(iova)
    assert hit is not None and hit[2] & IOMMU_MMIO
    c.finish()


def test_other_exporters_are_eopnotsupp() -> None:
    c = Ctx(mock_buf=False)
    buf = kapi.movable_dmabuf(c.h, SIZE)
    fd = core.dma_buf_fd(c.h.proc, buf, L.O_CLOEXEC)
    err(errno.EOPNOTSUPP, c.map_file, 0, SIZE, None, fd)
    err(errno.EOPNOTSUPP, c.revoke, True, fd)  # DMABUF_REVOKE: not the mock's buffer
    assert "dma-buf-attachment" not in c.h.kernel.live
    c.finish()


def test_vfio_like_revocable_exporter() -> None:
    """kernel/dma_buf/mock.py (vfio-pci's rules): revoke unmaps; a revoked buffer is refused
    at attach (ENODEV); after un-revoke, unmap and map again."""
    c = Ctx(mock_buf=False)
    buf = kapi.revocable_dmabuf(c.h, SIZE)
    fd = core.dma_buf_fd(c.h.proc, buf, L.O_CLOEXEC)
    d = c.add_domain()
    iova = c.map_file(0, SIZE, None, fd)
    assert c.dma_read(d, iova) == bytes(16)
    kapi.revoke_buffer(buf)
    assert c.dma_read(d, iova) is None
    err(errno.ENODEV, c.map_file, 0, SIZE, None, fd)
    kapi.unrevoke_buffer(buf)
    assert c.dma_read(d, iova) is None
    assert c.unmap(iova, SIZE) == SIZE
    assert c.map_file(0, SIZE, iova, fd) == iova
    assert c.dma_read(d, iova) == bytes(16)
    c.finish()


def test_before_6_19_there_is_no_mock_dmabuf() -> None:
    c = Ctx("linux-6.18", mock_buf=False)
    err(errno.EOPNOTSUPP, c.get_dmabuf, SIZE)
    c.finish()


def test_dmabuf_get_checks() -> None:
    c = Ctx(mock_buf=False)
    err(errno.EINVAL, c.get_dmabuf, 0)
    err(errno.EINVAL, c.get_dmabuf, 513 * PAGE)
    fd = c.get_dmabuf(PAGE + 1)  # rounded up to a page
    assert kapi.dmabuf_of(c.h, fd).size() == 2 * PAGE
    assert c.h.proc.fds[fd].kind == "dma-buf"
    err(errno.EINVAL, c.revoke, True, c.fd)  # not a dma-buf
    c.finish()


def test_dmabuf_get_returns_0_in_7_3() -> None:
    """7.3 (profile iommufd_test_dmabuf_get_returns_fd off): the fd is installed, at the
    lowest free number, but the ioctl returns 0."""
    c = Ctx(replace(get_profile("linux-7.1"), iommufd_test_dmabuf_get_returns_fd=False),
            mock_buf=False)
    want = c.h.fcntl(c.fd, L.F_DUPFD_CLOEXEC, 0)
    c.h.close(want)
    assert c.get_dmabuf(SIZE) == 0
    assert c.h.proc.fds[want].kind == "dma-buf"
    assert c.h.fcntl(want, L.F_GETFD) == L.FD_CLOEXEC
    c.dfd = want
    assert c.unmap(c.map_file(0, SIZE), SIZE) == SIZE
    c.finish()


# ----- lifetime ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["dmabuf_first", "iommufd_first", "exit"])
@pytest.mark.parametrize("revoked", [False, True])
def test_close_in_any_order_leaks_nothing(order: str, revoked: bool) -> None:
    c = Ctx()
    c.add_domain()
    c.map_file(0, SIZE)
    c.map_file(PAGE, PAGE)
    if revoked:
        c.revoke(True)
    for dom in c.domains:
        c.iopt.table_remove_domain(dom)
    c.domains.clear()
    if order == "dmabuf_first":
        c.h.close(c.dfd)
        assert c.h.kernel.live.get("dma-buf-attachment") == 2  # the areas hold the buffer
        c.h.close(c.fd)
    elif order == "iommufd_first":
        c.h.close(c.fd)
        assert "dma-buf-attachment" not in c.h.kernel.live
        c.h.close(c.dfd)
    c.finish()
