"""The VFIO core and vfio-pci on SimHost's edu device (kernel/vfio/: vfio_main.py,
device_cdev.py, iommufd.py, pci/vfio_pci_core.py, pci/vfio_pci_config.py,
pci/vfio_pci_rdwr.py): the EINVAL-before-bind rule, bind / attach / replace / detach through
iommufd with the edu's DMA reaching (then not reaching) the IOAS's memory, the info ioctls,
the virtual config space, BAR access through the region and through an mmap, MSE clear →
SIGBUS and zap, RESET on a device without a reset method, and a clean teardown.

Model-only (SimHost): the real-kernel lane needs a vfio-bound edu, which the conformance
tests of issue 11 §6 cover."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable
from typing import Any

import pytest

import passthru.kernel.vfio.pci.vfio_pci as vfio_pci_mod  # its initcall, until "vfio" is BUILTIN
from passthru import Fault, SimHost
from passthru.check.runner import check
from passthru.check.scenario import Sandbox, scenario
from passthru.kernel.vfio.pci.vfio_pci import vfio_pci_devices
from passthru.kernel.vfio.pci.vfio_pci_core import VfioPciCoreDevice
from passthru.kernel.vfio.vfio_main import VfioInfoCap
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

VFIO0 = "/dev/vfio/devices/vfio0"
PAGE = 4096
MiB = 1 << 20
RW = I.IOMMU_IOAS_MAP_WRITEABLE | I.IOMMU_IOAS_MAP_READABLE
CFG = V.vfio_pci_index_to_offset(V.VFIO_PCI_CONFIG_REGION_INDEX)
BAR0 = V.vfio_pci_index_to_offset(0)
EDU_ID = 0x010000ED
PCI_COMMAND, MEMORY, MASTER = 0x04, 0x2, 0x4


def err(fn: Callable[..., Any], *a: Any) -> int:
    with pytest.raises(OSError) as e:
        fn(*a)
    return int(e.value.errno)


class Env:
    """A SimHost with /dev/iommu and vfio0 open."""

    def __init__(self) -> None:
        self.h = SimHost()
        self.iommufd = self.h.open("/dev/iommu", L.O_RDWR)
        self.fd = self.h.open(VFIO0, L.O_RDWR)
        self.vdev: VfioPciCoreDevice = vfio_pci_devices(self.h.kernel)["edu0"]
        self.pdev = self.vdev.pdev

    def bind(self, fd: int | None = None) -> int:
        b = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                       iommufd=self.iommufd)
        self.h.ioctl(self.fd if fd is None else fd, V.VFIO_DEVICE_BIND_IOMMUFD, b)
        return int(b.out_devid)

    def ioas(self) -> int:
        c = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        self.h.ioctl(self.iommufd, I.IOMMU_IOAS_ALLOC, c)
        return int(c.out_ioas_id)

    def buf(self, n: int) -> int:
        return self.h.mmap(0, n, L.PROT_READ | L.PROT_WRITE,
                           L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)

    def map(self, ioas: int, va: int, n: int, iova: int) -> None:
        c = I.iommu_ioas_map(size=ctypes.sizeof(I.iommu_ioas_map), ioas_id=ioas, user_va=va,
                             length=n, iova=iova, flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA)
        self.h.ioctl(self.iommufd, I.IOMMU_IOAS_MAP, c)

    def attach(self, pt_id: int) -> int:
        a = V.vfio_device_attach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        self.h.ioctl(self.fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        return int(a.pt_id)

    def detach(self) -> None:
        d = V.vfio_device_detach_iommufd_pt(
            argsz=ctypes.sizeof(V.vfio_device_detach_iommufd_pt))
        self.h.ioctl(self.fd, V.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)

    def cfg_read(self, off: int, n: int) -> int:
        return int.from_bytes(self.h.pread(self.fd, n, CFG + off), "little")

    def cfg_write(self, off: int, n: int, val: int) -> None:
        assert self.h.pwrite(self.fd, val.to_bytes(n, "little"), CFG + off) == n

    def bar_write(self, off: int, n: int, val: int) -> None:
        self.h.pwrite(self.fd, val.to_bytes(n, "little"), BAR0 + off)

    def region(self, index: int) -> V.vfio_region_info:
        r = V.vfio_region_info(argsz=ctypes.sizeof(V.vfio_region_info), index=index)
        self.h.ioctl(self.fd, V.VFIO_DEVICE_GET_REGION_INFO, r)
        return r

    def edu_dma(self, src: int, dst: int, n: int, to_ram: bool) -> None:
        """Program the edu's DMA engine through BAR0 (8-byte registers at 0x80..0x98)."""
        self.bar_write(0x80, 8, src)
        self.bar_write(0x88, 8, dst)
        self.bar_write(0x90, 8, n)
        self.bar_write(0x98, 8, 0x1 | (0x2 if to_ram else 0))


@pytest.fixture
def env() -> Env:
    return Env()


# ----- before the bind -----
DEVICE_IOCTLS = (V.VFIO_DEVICE_GET_INFO, V.VFIO_DEVICE_GET_REGION_INFO,
                 V.VFIO_DEVICE_GET_IRQ_INFO, V.VFIO_DEVICE_SET_IRQS, V.VFIO_DEVICE_RESET,
                 V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, V.VFIO_DEVICE_PCI_HOT_RESET,
                 V.VFIO_DEVICE_FEATURE, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                 V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VFIO_GROUP_GET_STATUS, 0x3B00 + 99)


def test_device_node_is_there_and_the_gpu_is_not_bound() -> None:
    h = SimHost()
    nodes = sorted(p for p in h.kernel.devices if p.startswith("/dev/vfio"))
    assert VFIO0 in nodes and "/dev/vfio/0" in nodes  # the cdev and the edu's group
    assert "/dev/vfio/devices/vfio1" not in nodes
    assert set(vfio_pci_devices(h.kernel)) == {"edu0"}


@pytest.mark.parametrize("cmd", DEVICE_IOCTLS)
def test_every_ioctl_is_einval_before_bind(env: Env, cmd: int) -> None:
    assert err(env.h.ioctl, env.fd, cmd, bytearray(64)) == errno.EINVAL


def test_read_write_mmap_are_einval_before_bind(env: Env) -> None:
    h = env.h
    assert err(h.pread, env.fd, 4, CFG) == errno.EINVAL
    assert err(h.pwrite, env.fd, b"\0" * 4, BAR0) == errno.EINVAL
    assert err(h.read, env.fd, 4) == errno.EINVAL
    assert err(h.write, env.fd, b"\0") == errno.EINVAL
    assert err(h.mmap, 0, PAGE, L.PROT_READ, L.MAP_SHARED, env.fd, BAR0) == errno.EINVAL
    env.bind()
    assert env.cfg_read(0, 4) == 0x11E81234


def test_bind_checks(env: Env) -> None:
    h = env.h
    size = ctypes.sizeof(V.vfio_device_bind_iommufd)
    short = V.vfio_device_bind_iommufd(argsz=8, iommufd=env.iommufd)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_BIND_IOMMUFD, short) == errno.EINVAL
    flags = V.vfio_device_bind_iommufd(argsz=size, iommufd=env.iommufd, flags=2)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_BIND_IOMMUFD, flags) == errno.EINVAL
    neg = V.vfio_device_bind_iommufd(argsz=size, iommufd=-1)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_BIND_IOMMUFD, neg) == errno.EINVAL
    closed = V.vfio_device_bind_iommufd(argsz=size, iommufd=99)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_BIND_IOMMUFD, closed) == errno.EBADF
    null = h.open("/dev/null", L.O_RDWR)
    notfd = V.vfio_device_bind_iommufd(argsz=size, iommufd=null)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_BIND_IOMMUFD, notfd) == errno.EBADFD
    assert err(h.pread, env.fd, 4, CFG) == errno.EINVAL  # the failures bound nothing
    devid = env.bind()
    assert devid > 0
    assert env.vdev.iommufd_device.id == devid
    assert err(env.bind) == errno.EINVAL  # this file is bound already
    fd2 = h.open(VFIO0, L.O_RDWR)
    assert err(env.bind, fd2) == errno.EINVAL  # the device is open through another file
    assert err(h.pread, fd2, 4, CFG) == errno.EINVAL


# ----- attach / replace / detach and the edu's DMA ------------------------------------------------
def test_attach_dma_replace_detach(env: Env) -> None:
    h = env.h
    env.bind()
    ioas1, ioas2 = env.ioas(), env.ioas()
    va1, va2 = env.buf(4 * PAGE), env.buf(4 * PAGE)
    env.map(ioas1, va1, 4 * PAGE, 0x10_0000)
    env.map(ioas2, va2, 4 * PAGE, 0x10_0000)
    h.poke(va1, b"from-ioas-one!!!")
    h.poke(va2, b"from-ioas-two!!!")
    hwpt1 = env.attach(ioas1)
    assert hwpt1 not in (0, ioas1, ioas2)  # the auto domain's HWPT id is written back
    env.cfg_write(PCI_COMMAND, 2, env.cfg_read(PCI_COMMAND, 2) | MASTER)
    # RAM -> the edu's buffer, then the buffer -> RAM one page further on.
    env.edu_dma(0x10_0000, 0x40000, 16, to_ram=False)
    env.edu_dma(0x40000, 0x10_1000, 16, to_ram=True)
    assert h.peek(va1 + PAGE, 16) == b"from-ioas-one!!!"
    hwpt2 = env.attach(ioas2)  # attach again: replaces
    assert hwpt2 not in (hwpt1, 0)
    env.edu_dma(0x10_0000, 0x40000, 16, to_ram=False)
    env.edu_dma(0x40000, 0x10_2000, 16, to_ram=True)
    assert h.peek(va2 + 2 * PAGE, 16) == b"from-ioas-two!!!"
    assert h.peek(va1 + 2 * PAGE, 16) == bytes(16)
    env.detach()
    assert env.pdev.dma(0x10_0000, 16, False) is None  # blocked: the IOMMU faults
    env.edu_dma(0x40000, 0x10_3000, 16, to_ram=True)
    assert h.peek(va2 + 3 * PAGE, 16) == bytes(16)
    env.detach()  # nothing attached: no error


def test_attach_checks(env: Env) -> None:
    h = env.h
    env.bind()
    size = ctypes.sizeof(V.vfio_device_attach_iommufd_pt)
    for argsz, flags, want in ((8, 0, errno.EINVAL), (size, 2, errno.EINVAL),
                               (12, V.VFIO_DEVICE_ATTACH_PASID, errno.EINVAL)):
        a = V.vfio_device_attach_iommufd_pt(argsz=argsz, flags=flags, pt_id=1)
        assert err(h.ioctl, env.fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == want
    a = V.vfio_device_attach_iommufd_pt(argsz=size, pt_id=12345)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) == errno.ENOENT
    ioas = env.ioas()
    p = V.vfio_device_attach_iommufd_pt(argsz=size, flags=V.VFIO_DEVICE_ATTACH_PASID,
                                        pt_id=ioas, pasid=1)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, p) == errno.EINVAL  # no PASID
    assert not env.vdev.pasids
    d = V.vfio_device_detach_iommufd_pt(argsz=8, flags=1)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EINVAL
    d = V.vfio_device_detach_iommufd_pt(argsz=4)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == errno.EINVAL


# ----- info ioctls -----
def test_get_info_region_info_irq_info(env: Env) -> None:
    h = env.h
    env.bind()
    info = V.vfio_device_info(argsz=ctypes.sizeof(V.vfio_device_info))
    h.ioctl(env.fd, V.VFIO_DEVICE_GET_INFO, info)
    assert (info.flags, info.num_regions, info.num_irqs) == (V.VFIO_DEVICE_FLAGS_PCI, 9, 5)
    short = V.vfio_device_info(argsz=12)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_GET_INFO, short) == errno.EINVAL
    rw = V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
    bar0 = env.region(0)
    assert (bar0.size, bar0.flags, bar0.offset, bar0.cap_offset) == (
        MiB, rw | V.VFIO_REGION_INFO_FLAG_MMAP, 0, 0)
    for i in range(1, 7):  # BAR1-5 unimplemented, no ROM
        r = env.region(i)
        assert (r.size, r.flags, r.offset) == (0, 0, i << 40)
    cfg = env.region(V.VFIO_PCI_CONFIG_REGION_INDEX)
    assert (cfg.size, cfg.flags, cfg.offset) == (256, rw, CFG)
    for index in (V.VFIO_PCI_VGA_REGION_INDEX, 9, 100):
        r = V.vfio_region_info(argsz=ctypes.sizeof(V.vfio_region_info), index=index)
        assert err(h.ioctl, env.fd, V.VFIO_DEVICE_GET_REGION_INFO, r) == errno.EINVAL
    r = V.vfio_region_info(argsz=16, index=0)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_GET_REGION_INFO, r) == errno.EINVAL

    def irq(index: int) -> tuple[int, int]:
        q = V.vfio_irq_info(argsz=ctypes.sizeof(V.vfio_irq_info), index=index)
        h.ioctl(env.fd, V.VFIO_DEVICE_GET_IRQ_INFO, q)
        return int(q.flags), int(q.count)

    ev = V.VFIO_IRQ_INFO_EVENTFD
    assert irq(V.VFIO_PCI_INTX_IRQ_INDEX) == (
        ev | V.VFIO_IRQ_INFO_MASKABLE | V.VFIO_IRQ_INFO_AUTOMASKED, 1)
    assert irq(V.VFIO_PCI_MSI_IRQ_INDEX) == (ev | V.VFIO_IRQ_INFO_NORESIZE, 1)
    assert irq(V.VFIO_PCI_MSIX_IRQ_INDEX) == (ev | V.VFIO_IRQ_INFO_NORESIZE, 0)  # no MSI-X
    assert irq(V.VFIO_PCI_REQ_IRQ_INDEX) == (ev | V.VFIO_IRQ_INFO_NORESIZE, 1)
    for index in (V.VFIO_PCI_ERR_IRQ_INDEX, 5):  # ERR: the edu is not PCIe (before 7.3)
        q = V.vfio_irq_info(argsz=ctypes.sizeof(V.vfio_irq_info), index=index)
        assert err(h.ioctl, env.fd, V.VFIO_DEVICE_GET_IRQ_INFO, q) == errno.EINVAL


# ----- config space -----
def test_config_virtual_and_passthrough_bits(env: Env) -> None:
    env.bind()
    pdev = env.pdev
    assert env.cfg_read(0, 4) == 0x11E81234
    env.cfg_write(0, 4, 0)  # IDs are read-only
    assert env.cfg_read(0, 4) == 0x11E81234
    # BARs are virtual: sizing with all ones, the hardware's BAR untouched
    assert env.cfg_read(0x10, 4) == 0xF000_0000
    env.cfg_write(0x10, 4, 0xFFFF_FFFF)
    assert env.cfg_read(0x10, 4) == 0xFFF0_0000  # ~(1 MiB - 1)
    assert pdev.cfg_read(0x10, 4) == 0xF000_0000
    env.cfg_write(0x10, 4, 0xF000_0000)
    assert env.cfg_read(0x14, 4) == 0  # unimplemented BAR1
    # INTERRUPT_LINE: virtual and writable; the hardware's stays
    env.cfg_write(0x3C, 1, 0x0B)
    assert env.cfg_read(0x3C, 1) == 0x0B and pdev.cfg_read(0x3C, 1) == 0
    assert env.cfg_read(0x3D, 1) == 1  # INTA
    # COMMAND: MEMORY (set by pci_enable_device) and MASTER pass through to the hardware
    assert env.cfg_read(PCI_COMMAND, 2) & MEMORY and pdev.memory_enabled
    env.cfg_write(PCI_COMMAND, 2, MEMORY | MASTER)
    assert pdev.bus_master and env.cfg_read(PCI_COMMAND, 2) & MASTER
    # revision/class pass through read-only
    assert env.cfg_read(0x08, 4) == pdev.cfg_read(0x08, 4) == 0x00FF0010
    env.cfg_write(0x08, 4, 0)
    assert env.cfg_read(0x08, 4) == 0x00FF0010
    # MSI is emulated: the enable bit lands in vconfig only
    msi = pdev.msi_cap
    env.cfg_write(msi + 2, 2, env.cfg_read(msi + 2, 2) | 1)
    assert env.cfg_read(msi + 2, 2) & 1 and not pdev.cfg_read(msi + 2, 2) & 1
    # a whole-header read in one call, split into aligned chunks
    assert env.h.pread(env.fd, 64, CFG)[:4] == (0x11E81234).to_bytes(4, "little")
    assert err(env.h.pread, env.fd, 4, CFG + 254) == errno.EFAULT
    assert err(env.h.pread, env.fd, 4, CFG + 256) == errno.EFAULT


# ----- BAR access -----
def test_bar_read_write_through_the_region(env: Env) -> None:
    env.bind()
    h = env.h
    assert int.from_bytes(h.pread(env.fd, 4, BAR0), "little") == EDU_ID
    env.bar_write(0x04, 4, 0x12345678)  # liveness: reads the bitwise NOT
    assert int.from_bytes(h.pread(env.fd, 4, BAR0 + 4), "little") == ~0x12345678 & 0xFFFFFFFF
    assert len(h.pread(env.fd, 16, BAR0 + MiB - 8)) == 8  # clipped to the BAR
    assert err(h.pread, env.fd, 4, BAR0 + MiB) == errno.EINVAL
    assert err(h.pread, env.fd, 4, V.vfio_pci_index_to_offset(1)) == errno.EINVAL
    assert err(h.pwrite, env.fd, b"\0", V.vfio_pci_index_to_offset(6)) == errno.EINVAL
    assert err(h.pread, env.fd, 4, V.vfio_pci_index_to_offset(9)) == errno.EINVAL
    env.cfg_write(PCI_COMMAND, 2, 0)  # MSE clear: the region's BAR access is EIO
    assert err(h.pread, env.fd, 4, BAR0) == errno.EIO


def test_bar_mmap_mse_sigbus_zap_and_fault_back(env: Env) -> None:
    env.bind()
    h = env.h
    assert err(h.mmap, 0, PAGE, L.PROT_READ, L.MAP_PRIVATE, env.fd, BAR0) == errno.EINVAL
    assert err(h.mmap, 0, 2 * MiB, L.PROT_READ, L.MAP_SHARED, env.fd, BAR0) == errno.EINVAL
    assert err(h.mmap, 0, PAGE, L.PROT_READ, L.MAP_SHARED, env.fd, CFG) == errno.EINVAL
    va = h.mmap(0, MiB, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, env.fd, BAR0)
    vma = h.proc.mm.find_vma(va)
    assert vma is not None and vma.special and not list(vma.ptes.overlapping(va, va + MiB))
    assert int.from_bytes(h.peek(va, 4), "little") == EDU_ID  # CPU load via the PTE
    assert list(vma.ptes.overlapping(va, va + PAGE))
    h.poke(va + 4, (0xA5A5A5A5).to_bytes(4, "little"))
    assert int.from_bytes(h.peek(va + 4, 4), "little") == 0x5A5A5A5A
    env.cfg_write(PCI_COMMAND, 2, 0)  # MSE clear: zap
    assert not list(vma.ptes.overlapping(va, va + MiB))
    with pytest.raises(Fault) as f:
        h.peek(va, 4)
    assert f.value.kind == "SIGBUS"
    env.cfg_write(PCI_COMMAND, 2, MEMORY)  # MSE set: faults in again
    assert int.from_bytes(h.peek(va, 4), "little") == EDU_ID
    assert env.vdev.i_mmap == [vma]
    h.munmap(va, MiB)
    assert env.vdev.i_mmap == []


def test_low_power_feature_sigbus_and_exit(env: Env) -> None:
    env.bind()
    h = env.h
    va = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, env.fd, BAR0)
    assert int.from_bytes(h.peek(va, 4), "little") == EDU_ID

    def feature(flags: int, payload: bytes = b"") -> int:
        return h.ioctl(env.fd, V.VFIO_DEVICE_FEATURE, V.device_feature(flags, payload))

    entry = V.VFIO_DEVICE_FEATURE_SET | V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY
    exit_ = V.VFIO_DEVICE_FEATURE_SET | V.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT
    assert feature(entry) == 0
    with pytest.raises(Fault):
        h.peek(va, 4)
    assert err(feature, entry) == errno.EINVAL  # already in low power
    assert feature(exit_) == 0
    assert int.from_bytes(h.peek(va, 4), "little") == EDU_ID


def test_feature_rules(env: Env) -> None:
    env.bind()
    h = env.h

    def feature(flags: int, payload: bytes = b"") -> int:
        return h.ioctl(env.fd, V.VFIO_DEVICE_FEATURE, V.device_feature(flags, payload))

    get, set_, probe = (V.VFIO_DEVICE_FEATURE_GET, V.VFIO_DEVICE_FEATURE_SET,
                        V.VFIO_DEVICE_FEATURE_PROBE)
    assert err(feature, 1 << 19 | V.VFIO_DEVICE_FEATURE_DMA_BUF) == errno.EINVAL
    assert err(feature, get | set_ | V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == errno.EINVAL
    assert feature(probe | set_ | V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == 0
    assert err(feature, probe | get | V.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == errno.EINVAL
    for nr in (V.VFIO_DEVICE_FEATURE_MIGRATION, V.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
               V.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, 0x1234):
        assert err(feature, probe | get | nr) == errno.ENOTTY
    assert feature(probe | get | V.VFIO_DEVICE_FEATURE_DMA_BUF) == 0
    short = bytearray(4)
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_FEATURE, short) == errno.EFAULT
    hdr = V.device_feature(get | V.VFIO_DEVICE_FEATURE_DMA_BUF)
    hdr[0] = 4  # argsz below the header
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_FEATURE, hdr) == errno.EINVAL


def test_reset_and_hot_reset_on_the_edu(env: Env) -> None:
    env.bind()
    h = env.h
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_RESET, 0) == errno.EINVAL  # no reset method
    info = bytearray(64)
    info[0] = 64
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info) == errno.ENODEV
    hot = V.vfio_pci_hot_reset(argsz=ctypes.sizeof(V.vfio_pci_hot_reset))
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_PCI_HOT_RESET, hot) == errno.ENODEV
    hot.count = 1
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_PCI_HOT_RESET, hot) == errno.EINVAL
    hot.count, hot.flags = 0, 1
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_PCI_HOT_RESET, hot) == errno.EINVAL
    assert err(h.ioctl, env.fd, V.VFIO_DEVICE_SET_IRQS, bytearray(32)) == errno.ENOTTY


# ----- lock rules -----
def test_zap_and_fault_assert_memory_lock(env: Env) -> None:
    env.bind()
    lockdep = [v for v in env.h.sched.violations if v.kind == "lockdep"]
    assert not lockdep
    env.vdev.zap_bars()  # without memory_lock held for write
    msgs = [v.message for v in env.h.sched.violations if v.kind == "lockdep"]
    assert any("vfio_pci_zap_bars" in m and "memory_lock" in m for m in msgs)


# ----- teardown -----
def test_close_releases_everything(env: Env) -> None:
    h = env.h
    env.bind()
    ioas = env.ioas()
    va = env.buf(PAGE)
    env.map(ioas, va, PAGE, 0x10_0000)
    env.attach(ioas)
    bar = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, env.fd, BAR0)
    assert int.from_bytes(h.peek(bar, 4), "little") == EDU_ID
    h.close(env.fd)  # the mapping keeps the file: still open
    assert env.vdev.open_count == 1
    h.munmap(bar, PAGE)
    assert env.vdev.open_count == 0 and env.vdev.iommufd_device is None
    fd = h.open(VFIO0, L.O_RDWR)  # open again: bind works again
    env.fd = fd
    env.bind()
    h.exit()
    assert h.leaks() == []
    assert env.vdev.open_count == 0


# ----- through the checker -----
def _fault_vs_mse_scenario() -> Any:
    @scenario(expect="safe", name="vfio_core_bar_fault_vs_mse_clear")
    def sc(s: Sandbox) -> None:
        h = s.host
        iommufd = h.open("/dev/iommu", L.O_RDWR)
        fd = h.open(VFIO0, L.O_RDWR)
        b = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                       iommufd=iommufd)
        h.ioctl(fd, V.VFIO_DEVICE_BIND_IOMMUFD, b)
        va = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, fd, BAR0)
        vdev = vfio_pci_devices(h.kernel)["edu0"]
        vma = h.proc.mm.find_vma(va)
        assert vma is not None

        def cpu() -> None:
            try:
                s.state["id"] = int.from_bytes(h.peek(va, 4), "little")
            except Fault:
                s.state["id"] = "sigbus"

        def mse_clear() -> None:
            h.pwrite(fd, (0).to_bytes(2, "little"), CFG + PCI_COMMAND)

        def no_stale_pte() -> str | None:
            if not vdev.memory_enabled() and list(vma.ptes.overlapping(va, va + PAGE)):
                return f"BAR PTE at {va:#x} while {vdev.name}'s memory is disabled"
            # All ones is a load that resolved its PTE before the zap and reached the device
            # after the MSE write: the model's CPU access is not atomic against the zap's
            # TLB flush (mm/vma.py Mm.access; the real kernel's shootdown waits for it).
            if s.state.get("id") not in (None, EDU_ID, "sigbus", 0xFFFFFFFF):
                return f"CPU read {s.state.get('id')!r} through the BAR mapping"
            return None

        s.spawn("cpu", cpu)
        s.spawn("mse", mse_clear)
        s.invariant("vfio-no-stale-bar-pte", no_stale_pte)
        s.final("vfio-no-stale-bar-pte", no_stale_pte)

    return sc.__passthru_scenario__  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_checker_bar_fault_vs_mse_clear_is_safe(strategy: str) -> None:
    v = check(_fault_vs_mse_scenario(), "linux-7.1", strategy=strategy)
    assert v.ok and not v.violations, [x.text() for x in v.violations]
    assert v.complete and v.schedules > 1


def _vmm_fail_nth_scenario() -> Any:
    @scenario(expect="safe", name="vfio_core_bind_attach_map_fail_nth")
    def sc(s: Sandbox) -> None:
        h = s.host
        iommufd = h.open("/dev/iommu", L.O_RDWR)

        def vmm() -> None:
            try:
                fd = h.open(VFIO0, L.O_RDWR)
                b = V.vfio_device_bind_iommufd(
                    argsz=ctypes.sizeof(V.vfio_device_bind_iommufd), iommufd=iommufd)
                h.ioctl(fd, V.VFIO_DEVICE_BIND_IOMMUFD, b)
                c = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
                h.ioctl(iommufd, I.IOMMU_IOAS_ALLOC, c)
                a = V.vfio_device_attach_iommufd_pt(
                    argsz=ctypes.sizeof(V.vfio_device_attach_iommufd_pt), pt_id=c.out_ioas_id)
                h.ioctl(fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
                va = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, fd, BAR0)
                h.peek(va, 4)
            except OSError as e:
                s.state["errno"] = e.errno

        s.spawn("vmm", vmm)

    return sc.__passthru_scenario__  # type: ignore[attr-defined]


def test_fail_nth_over_bind_attach_mmap_leaks_nothing() -> None:
    v = check(_vmm_fail_nth_scenario(), "linux-7.1", strategy="dfs", faults=True)
    assert v.ok and not v.violations, [x.text() for x in v.violations]
    assert v.schedules > 5  # one per injected failure at least


# ----- a device with PM, PCIe FLR and a reset method: the GPU, bound by vfio-pci.ids -----
@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setattr(vfio_pci_mod, "VFIO_PCI_IDS", ((0x1234, 0x11E8), (0x1234, 0x1111)))
    e = Env()
    e.fd = e.h.open("/dev/vfio/devices/vfio1", L.O_RDWR)
    e.vdev = vfio_pci_devices(e.h.kernel)["gpu0"]
    e.pdev = e.vdev.pdev
    e.bind()
    return e


def test_gpu_info_reset_and_hot_reset(gpu: Env) -> None:
    h = gpu.h
    info = V.vfio_device_info(argsz=ctypes.sizeof(V.vfio_device_info))
    h.ioctl(gpu.fd, V.VFIO_DEVICE_GET_INFO, info)
    assert info.flags == V.VFIO_DEVICE_FLAGS_PCI | V.VFIO_DEVICE_FLAGS_RESET
    assert gpu.region(0).size == 256 * MiB
    assert gpu.region(V.VFIO_PCI_CONFIG_REGION_INDEX).size == 4096
    va = h.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, gpu.fd, BAR0)
    h.poke(va, b"vram")
    assert h.ioctl(gpu.fd, V.VFIO_DEVICE_RESET, 0) == 0
    vma = h.proc.mm.find_vma(va)
    assert vma is not None and not list(vma.ptes.overlapping(va, va + PAGE))  # zapped
    assert gpu.pdev.memory_enabled  # config restored after the reset
    assert len(h.peek(va, 4)) == 4  # faults in again
    # Below a root port, the GPU can be hot reset (its bridge's secondary bus reset): INFO
    # lists it as owned, HOT_RESET revokes its dma-buf, zaps, resets the bus, un-revokes.
    info_arg = bytearray(64)
    info_arg[0] = 64
    assert h.ioctl(gpu.fd, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info_arg) == 0
    hdr = V.vfio_pci_hot_reset_info.from_buffer_copy(info_arg)
    assert hdr.count == 1 and hdr.flags & V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED
    buf_fd = h.ioctl(gpu.fd, V.VFIO_DEVICE_FEATURE, V.feature_dma_buf(0, [(0, PAGE)],
                                                                     L.O_RDWR))
    priv = h.proc.fds[buf_fd].priv
    h.peek(va, 4)
    before = len([e for e in h.sched.log.events if e.event == "bus-reset"])
    hot = V.vfio_pci_hot_reset(argsz=ctypes.sizeof(V.vfio_pci_hot_reset))
    assert h.ioctl(gpu.fd, V.VFIO_DEVICE_PCI_HOT_RESET, hot) == 0
    assert len([e for e in h.sched.log.events if e.event == "bus-reset"]) == before + 1
    vma = h.proc.mm.find_vma(va)
    assert vma is not None and not list(vma.ptes.overlapping(va, va + PAGE))  # zapped
    assert not priv.revoked and gpu.vdev.memory_enabled()  # un-revoked after the reset
    moves = [dict(e.args)["revoked"] for e in h.sched.log.events
             if e.subsystem == "vfio" and e.event == "dma_buf_move"]
    assert moves[-2:] == [True, False]  # revoked across the reset, then un-revoked


def test_gpu_d3hot_and_flr_through_config(gpu: Env) -> None:
    h, pdev = gpu.h, gpu.pdev
    va = h.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, gpu.fd, BAR0)
    h.peek(va, 4)
    pm = pdev.pm_cap + 4
    gpu.cfg_write(pm, 2, gpu.cfg_read(pm, 2) | 3)  # D3hot: zap, revoke, SIGBUS
    assert pdev.power_state == "D3hot" and not gpu.vdev.memory_enabled()
    with pytest.raises(Fault):
        h.peek(va, 4)
    assert err(h.pread, gpu.fd, 4, BAR0) == errno.EIO
    gpu.cfg_write(pm, 2, gpu.cfg_read(pm, 2) & ~3)  # D0: memory enabled again
    assert pdev.power_state == "D0" and gpu.vdev.memory_enabled()
    assert len(h.peek(va, 4)) == 4
    devctl = pdev.exp_cap + 8
    before = [e for e in h.sched.log.events if e.event == "flr-start"]
    gpu.cfg_write(devctl, 2, gpu.cfg_read(devctl, 2) | 0x8000)  # BCR_FLR
    assert len([e for e in h.sched.log.events if e.event == "flr-start"]) == len(before) + 1
    assert not gpu.cfg_read(devctl, 2) & 0x8000  # reads back 0
    vma = h.proc.mm.find_vma(va)
    assert vma is not None and not list(vma.ptes.overlapping(va, va + PAGE))
    assert gpu.vdev.memory_enabled() and len(h.peek(va, 4)) == 4


def test_mse_and_close_drive_the_dma_buf_revoke(env: Env) -> None:
    h = env.h
    env.bind()
    buf_fd = h.ioctl(env.fd, V.VFIO_DEVICE_FEATURE,
                     V.feature_dma_buf(0, [(0, PAGE)], L.O_RDWR))
    priv = h.proc.fds[buf_fd].priv
    assert not priv.revoked and env.vdev.dmabufs == [priv]
    env.cfg_write(PCI_COMMAND, 2, 0)
    assert priv.revoked
    env.cfg_write(PCI_COMMAND, 2, MEMORY)
    assert not priv.revoked
    h.close(env.fd)  # close: permanent revoke, the dma-buf fd lives on
    assert priv.revoked and priv.vdev is None and env.vdev.dmabufs == []
    h.exit()
    assert h.leaks() == []


def test_close_restores_the_config_saved_at_open(env: Env) -> None:
    env.bind()
    env.cfg_write(PCI_COMMAND, 2, MASTER)  # MSE off, BME on
    assert not env.pdev.memory_enabled and env.pdev.bus_master
    env.h.close(env.fd)
    assert env.pdev.memory_enabled and not env.pdev.bus_master


def test_info_capability_chain_layout() -> None:
    """vfio_info_cap_add / vfio_info_cap_shift: 8-byte aligned entries, ``next`` relative
    to the chain, then shifted past the info struct (no model device carries a chain)."""
    caps = VfioInfoCap()
    caps.add(V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, b"")
    caps.add(V.VFIO_REGION_INFO_CAP_TYPE, 1, bytes(8))
    assert caps.size == 24
    first = V.vfio_info_cap_header.from_buffer_copy(bytes(caps.buf[:8]))
    assert (first.id, first.version, first.next) == (3, 1, 8)
    caps.shift(32)
    first = V.vfio_info_cap_header.from_buffer_copy(bytes(caps.buf[:8]))
    second = V.vfio_info_cap_header.from_buffer_copy(bytes(caps.buf[8:16]))
    assert (first.next, second.id, second.next) == (40, 2, 0)
