"""The VFIO device cdev's rules (drivers/vfio/vfio_main.c, device_cdev.c, pci/vfio_pci_core.c,
pci/vfio_pci_config.c, pci/vfio_pci_rdwr.c, pci/vfio_pci_dmabuf.c; KERNEL.md §2 and §4) on
QEMU's edu device (1234:11e8), on SimHost and on the real kernel:

- nothing but VFIO_DEVICE_BIND_IOMMUFD before the bind: every other ioctl, read, write and
  mmap is EINVAL;
- BIND / ATTACH_IOMMUFD_PT / DETACH_IOMMUFD_PT errnos;
- GET_INFO, GET_REGION_INFO and GET_IRQ_INFO values and errnos for the edu;
- config space: IDs, revision and class read-only, BARs virtual (sizing), INTERRUPT_LINE
  virtual and writable, COMMAND.MEMORY (MSE) passed through and gating BAR access; past the
  end EFAULT;
- BAR registers through the region and an mmap; MSE clear → region access EIO and a touch of
  the BAR's mmap SIGBUS (in a forked child on LinuxHost), MSE set → back;
- a 1- or 2-byte access to an edu register reads 0 (QEMU's .valid.min_access_size = 4);
- RESET EINVAL (the edu has no reset method);
- the edu's DMA through the IOMMU into an IOAS, and its absence once detached;
- VFIO_DEVICE_FEATURE_DMA_BUF's checks in the kernel's order (kernel/vfio/pci/dmabuf.py),
  on a kernel that has the feature (6.19+; the sim variant runs linux-7.1).

Version-dependent (kernel_version: the running kernel, or the SimHost profile): the ERR IRQ
index on the (conventional PCI) edu is EINVAL before 7.3 and count 1 from 7.3; a dma-buf of
the unimplemented BAR1 is EINVAL at get_dmabuf_phys on 6.19 and ENODEV at the barmap check
from 7.1 (a 7.0.y kernel has the backport and would need the 7.1 answer).

The linux variant needs the edu bound to vfio-pci as /dev/vfio/devices/vfio0 and /dev/iommu
(the real-kernel lane's QEMU guest); it skips naming the missing node.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest

from passthru.uapi import linux as L
from passthru.uapi import vfio as V
from passthru.vmm import Iommufd, Memfd, VfioDevice

from ._iommufd import is_linux, raises
from ._probe import PAGE, expect_no_signal, expect_sigbus
from ._vfio import edu_dma, kernel_version

VFIO0 = "/dev/vfio/devices/vfio0"
pytestmark = pytest.mark.node(VFIO0, "/dev/iommu")

EDU_ID = 0x010000ED
MiB = 1 << 20
CFG = V.vfio_pci_index_to_offset(V.VFIO_PCI_CONFIG_REGION_INDEX)
BAR0 = V.vfio_pci_index_to_offset(0)
PCI_COMMAND, MEMORY, MASTER = 0x04, 0x2, 0x4
RW_FLAGS = V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
IOVA = 0x100000  # below the edu's 28-bit DMA mask


def sized(struct: type[ctypes.Structure], **kw: Any) -> Any:
    return struct(argsz=ctypes.sizeof(struct), **kw)


@pytest.fixture
def edu(host: Any) -> Iterator[tuple[Any, Iommufd, VfioDevice]]:
    """/dev/iommu and the edu's cdev, open, not bound; everything closed after the test."""
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        yield host, ifd, dev


@pytest.fixture
def bound(edu: tuple[Any, Iommufd, VfioDevice]) -> tuple[Any, Iommufd, VfioDevice]:
    edu[2].bind(edu[1])
    return edu


# ----- before the bind ------------------------------------------------------------------------
UNBOUND_IOCTLS = (V.VFIO_DEVICE_GET_INFO, V.VFIO_DEVICE_GET_REGION_INFO,
                  V.VFIO_DEVICE_GET_IRQ_INFO, V.VFIO_DEVICE_SET_IRQS, V.VFIO_DEVICE_RESET,
                  V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, V.VFIO_DEVICE_PCI_HOT_RESET,
                  V.VFIO_DEVICE_FEATURE, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                  V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VFIO_GROUP_GET_STATUS)


@pytest.mark.parametrize("cmd", UNBOUND_IOCTLS, ids=hex)
def test_every_ioctl_but_bind_is_einval_before_bind(edu, cmd):
    host, _, dev = edu
    raises(errno.EINVAL, host.ioctl, dev.fd, cmd, bytearray(64))


def test_read_write_mmap_are_einval_before_bind(edu):
    host, ifd, dev = edu
    raises(errno.EINVAL, host.pread, dev.fd, 4, CFG)
    raises(errno.EINVAL, host.pwrite, dev.fd, b"\0" * 4, BAR0)
    raises(errno.EINVAL, host.mmap, 0, PAGE, L.PROT_READ, L.MAP_SHARED, dev.fd, BAR0)
    dev.bind(ifd)
    assert dev.config_read(0, 4) == 0x11E81234


# ----- bind / attach / detach -----------------------------------------------------------------
def test_bind_errnos_in_order(edu):
    host, ifd, dev = edu
    size = ctypes.sizeof(V.vfio_device_bind_iommufd)

    def bind(**kw: Any) -> int:
        return host.ioctl(dev.fd, V.VFIO_DEVICE_BIND_IOMMUFD,
                          V.vfio_device_bind_iommufd(**{"argsz": size, **kw}))

    raises(errno.EINVAL, bind, argsz=8, iommufd=ifd.fd)  # short of out_devid
    raises(errno.EINVAL, bind, iommufd=ifd.fd, flags=2)  # unknown flag
    raises(errno.EINVAL, bind, iommufd=-1)
    raises(errno.EBADF, bind, iommufd=4000)  # no such fd
    with Memfd(host, size=PAGE) as mfd:
        raises(errno.EBADFD, bind, iommufd=mfd.fd)  # an fd, not an iommufd
    raises(errno.EINVAL, host.pread, dev.fd, 4, CFG)  # the failures bound nothing
    devid = dev.bind(ifd)
    assert devid > 0
    raises(errno.EINVAL, dev.bind, ifd)  # this file is bound already
    with VfioDevice(host, VFIO0) as other:  # a second open of the node succeeds ...
        raises(errno.EINVAL, other.bind, ifd)  # ... but the device is open elsewhere


def test_attach_detach_errnos(bound):
    host, ifd, dev = bound
    size = ctypes.sizeof(V.vfio_device_attach_iommufd_pt)
    ioas = ifd.alloc_ioas()
    for argsz, flags in ((8, 0), (size, 2)):  # short of pt_id; unknown flag
        a = V.vfio_device_attach_iommufd_pt(argsz=argsz, flags=flags, pt_id=ioas.id)
        raises(errno.EINVAL, host.ioctl, dev.fd, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
    raises(errno.ENOENT, dev.attach, 12345)  # no such object
    raises(errno.EINVAL, dev.attach, dev.devid)  # an object that is not a page table
    hwpt = dev.attach(ioas)
    assert hwpt not in (0, ioas.id)
    for argsz, flags in ((4, 0), (size, 2)):
        d = V.vfio_device_detach_iommufd_pt(argsz=argsz, flags=flags)
        raises(errno.EINVAL, host.ioctl, dev.fd, V.VFIO_DEVICE_DETACH_IOMMUFD_PT, d)
    dev.detach()
    dev.detach()  # nothing attached: still 0


def test_edu_dma_round_trip_through_the_iommu(bound):
    host, ifd, dev = bound
    with Memfd(host, size=4 * PAGE) as ram:
        view = ram.mmap()
        ioas = ifd.alloc_ioas()
        ioas.map(view.addr, 4 * PAGE, iova=IOVA)
        dev.attach(ioas)
        assert dev.set_command(memory=True, master=True) & (MEMORY | MASTER) == MEMORY | MASTER
        bar = dev.region(0)

        view.write(0, b"through the IOMMU")
        edu_dma(bar, IOVA, 0x40000, 17, to_ram=False)  # RAM -> the edu's buffer
        edu_dma(bar, 0x40000, IOVA + PAGE, 17, to_ram=True)  # buffer -> RAM, a page further on
        assert view.read(PAGE, 17) == b"through the IOMMU"
        dev.detach()  # blocked: the device's DMA reaches nothing
        edu_dma(bar, 0x40000, IOVA + 2 * PAGE, 17, to_ram=True)
        assert view.read(2 * PAGE, 17) == bytes(17)
        ioas.unmap_all()


# ----- info ioctls ----------------------------------------------------------------------------
def test_get_info_region_info_irq_info(bound):
    host, _, dev = bound
    info = dev.get_info()
    assert (info.flags, info.num_regions, info.num_irqs) == (V.VFIO_DEVICE_FLAGS_PCI, 9, 5)
    raises(errno.EINVAL, dev.ioctl, V.VFIO_DEVICE_GET_INFO, V.vfio_device_info(argsz=12))
    bar0 = dev.region(0)
    assert (bar0.size, bar0.flags, bar0.offset) == (MiB, RW_FLAGS | V.VFIO_REGION_INFO_FLAG_MMAP,
                                                     0)
    for i in range(1, 7):  # BAR1-5 unimplemented; no ROM
        r = dev.region(i)
        assert (r.size, r.flags, r.offset) == (0, 0, V.vfio_pci_index_to_offset(i))
    cfg = dev.region(V.VFIO_PCI_CONFIG_REGION_INDEX)
    assert (cfg.size, cfg.flags, cfg.offset) == (256, RW_FLAGS, CFG)  # conventional PCI
    for index in (V.VFIO_PCI_VGA_REGION_INDEX, 9):
        raises(errno.EINVAL, dev.region, index)
    raises(errno.EINVAL, dev.ioctl, V.VFIO_DEVICE_GET_REGION_INFO,
           V.vfio_region_info(argsz=16, index=0))
    ev, noresize = V.VFIO_IRQ_INFO_EVENTFD, V.VFIO_IRQ_INFO_NORESIZE
    got = {i: (q.flags, q.count) for i in (0, 1, 2, 4) for q in [dev.irq_info(i)]}
    assert got == {
        V.VFIO_PCI_INTX_IRQ_INDEX: (ev | V.VFIO_IRQ_INFO_MASKABLE | V.VFIO_IRQ_INFO_AUTOMASKED, 1),
        V.VFIO_PCI_MSI_IRQ_INDEX: (ev | noresize, 1),
        # no MSI-X capability: has_dyn_msix false, so NORESIZE like the others
        V.VFIO_PCI_MSIX_IRQ_INDEX: (ev | noresize, 0),
        V.VFIO_PCI_REQ_IRQ_INDEX: (ev | noresize, 1),
    }
    if kernel_version(host) >= (7, 3):  # "vfio/pci: Remove the pcie check for ..._ERR_IRQ_INDEX"
        err = dev.irq_info(V.VFIO_PCI_ERR_IRQ_INDEX)
        assert (err.flags, err.count) == (ev | noresize, 1)
    else:  # ERR only for PCIe; the edu is conventional PCI
        raises(errno.EINVAL, dev.irq_info, V.VFIO_PCI_ERR_IRQ_INDEX)
    raises(errno.EINVAL, dev.irq_info, 5)  # past the indexes
    raises(errno.ENOTTY, dev.ioctl, 0x3B00 + 99, bytearray(64))  # unknown to vfio-pci


# ----- config space ---------------------------------------------------------------------------
def test_config_emulated_and_passthrough_bits(bound):
    host, _, dev = bound
    assert dev.config_read(0x00, 4) == 0x11E81234
    dev.config_write(0x00, 4, 0)  # IDs: read-only
    assert dev.config_read(0x00, 4) == 0x11E81234
    # revision 0x10; class code 0x00ff00: QEMU's class_id PCI_CLASS_OTHERS is the base class
    # and sub-class word (base 0x00, sub-class 0xff), prog-if 0
    assert dev.config_read(0x08, 4) == 0x00FF0010
    dev.config_write(0x08, 4, 0)
    assert dev.config_read(0x08, 4) == 0x00FF0010
    bar = dev.config_read(0x10, 4)  # BAR0 is virtual: sizing answers ~(size - 1)
    assert bar & 0xF == 0  # 32-bit, non-prefetchable memory
    dev.config_write(0x10, 4, 0xFFFFFFFF)
    assert dev.config_read(0x10, 4) == 0xFFF00000
    dev.config_write(0x10, 4, bar)
    assert dev.config_read(0x10, 4) == bar
    assert dev.config_read(0x14, 4) == 0  # BAR1 unimplemented
    dev.config_write(0x3C, 1, 0x0B)  # INTERRUPT_LINE: virtual, writable
    assert dev.config_read(0x3C, 1) == 0x0B
    assert dev.config_read(0x3D, 1) == 1  # INTERRUPT_PIN: INTA
    assert dev.config_read(PCI_COMMAND, 2) & MEMORY  # pci_enable_device at open
    assert host.pread(dev.fd, 64, CFG)[:4] == (0x11E81234).to_bytes(4, "little")
    raises(errno.EFAULT, host.pread, dev.fd, 4, CFG + 254)  # past the 256 bytes
    raises(errno.EFAULT, host.pread, dev.fd, 4, CFG + 256)


# ----- BARs, MSE, SIGBUS ----------------------------------------------------------------------
def test_bar_registers_and_region_bounds(bound):
    host, _, dev = bound
    bar = dev.region(0)
    assert bar.read_int(0x00, 4) == EDU_ID
    bar.write_int(0x04, 4, 0x12345678)
    assert bar.read_int(0x04, 4) == ~0x12345678 & 0xFFFFFFFF  # liveness: bitwise NOT
    assert len(bar.read(MiB - 8, 16)) == 8  # clipped at the BAR's end
    raises(errno.EINVAL, bar.read, MiB, 4)
    raises(errno.EINVAL, dev.read, V.vfio_pci_index_to_offset(1), 4)  # no BAR1
    raises(errno.EINVAL, dev.write, V.vfio_pci_index_to_offset(6), b"\0")  # no ROM
    raises(errno.EINVAL, dev.read, V.vfio_pci_index_to_offset(9), 4)  # no region 9


def test_edu_sub_dword_register_access_reads_zero(bound):
    """QEMU's edu declares .valid.min_access_size = 4 for its registers: the memory core
    refuses a 1- or 2-byte access before edu_mmio_read runs and reads it as
    unassigned_mem_read's 0 (a refused write is dropped)."""
    host, _, dev = bound
    bar = dev.region(0)
    assert bar.read_int(0x00, 2) == 0 and bar.read_int(0x00, 1) == 0
    assert bar.read_int(0x00, 4) == 0x010000ED


def test_bar_mmap_rules(bound):
    host, _, dev = bound
    raises(errno.EINVAL, host.mmap, 0, PAGE, L.PROT_READ, L.MAP_PRIVATE, dev.fd, BAR0)
    raises(errno.EINVAL, host.mmap, 0, 2 * MiB, L.PROT_READ, L.MAP_SHARED, dev.fd, BAR0)
    raises(errno.EINVAL, host.mmap, 0, PAGE, L.PROT_READ, L.MAP_SHARED, dev.fd, CFG)
    with dev.region(0).mmap() as m:
        assert int.from_bytes(m.read(0, 4), "little") == EDU_ID


def test_mse_clear_region_eio_and_mmap_sigbus(bound):
    host, _, dev = bound
    bar = dev.region(0)
    m = bar.mmap(PAGE)
    assert int.from_bytes(m.read(0, 4), "little") == EDU_ID  # faulted in
    assert dev.set_command(memory=False) & MEMORY == 0  # zaps the BAR's PTEs
    raises(errno.EIO, bar.read, 0, 4)
    expect_sigbus(host, lambda: m.read(0, 4))
    dev.set_command(memory=True)
    expect_no_signal(host, lambda: m.read(0, 4))
    assert int.from_bytes(m.read(0, 4), "little") == EDU_ID  # faults in again
    m.close()


def test_reset_is_einval_without_a_reset_method(bound):
    host, _, dev = bound
    assert not dev.get_info().can_reset
    raises(errno.EINVAL, dev.reset)


# ----- VFIO_DEVICE_FEATURE_DMA_BUF ------------------------------------------------------------
@pytest.fixture(params=[pytest.param("sim", id="sim"),
                        pytest.param("linux", id="linux", marks=pytest.mark.linux)])
def dmabuf_edu(request) -> Iterator[tuple[Any, Iommufd, VfioDevice]]:
    """The edu bound to an iommufd on a kernel with the DMA_BUF feature: the sim variant runs
    linux-7.1 (vfio-pci exports dma-bufs since 6.19, so the default linux-6.18 model rightly
    answers ENOTTY); the linux variant skips when PROBE says the feature is absent."""
    if request.param == "sim":
        from passthru import SimHost

        host: Any = SimHost(profile="linux-7.1")
    else:
        for node in (VFIO0, "/dev/iommu"):
            if not os.path.exists(node) or not os.access(node, os.R_OK | os.W_OK):
                pytest.skip(f"{node} absent or not accessible")
        from passthru.host.linux import LinuxHost

        host = LinuxHost()
    with Iommufd(host) as ifd, VfioDevice(host, VFIO0) as dev:
        dev.bind(ifd)
        if not dev.feature_probe(V.VFIO_DEVICE_FEATURE_DMA_BUF):
            pytest.skip("the running kernel has no VFIO_DEVICE_FEATURE_DMA_BUF (before 6.19)")
        yield host, ifd, dev
    if not is_linux(host):
        host.exit()
        assert host.leaks() == []
    else:
        host.close_all()


def export(dev: VfioDevice, region: int, ranges: list[tuple[int, int]], **kw: Any) -> int:
    return dev.ioctl(V.VFIO_DEVICE_FEATURE,
                     V.feature_dma_buf(region, ranges, L.O_RDWR | L.O_CLOEXEC, **kw))


def test_dma_buf_probe_and_feature_ops(dmabuf_edu):
    host, _, dev = dmabuf_edu
    F = V.VFIO_DEVICE_FEATURE_DMA_BUF
    assert dev.ioctl(V.VFIO_DEVICE_FEATURE, V.device_feature(
        V.VFIO_DEVICE_FEATURE_PROBE | V.VFIO_DEVICE_FEATURE_GET | F)) == 0
    raises(errno.EINVAL, dev.ioctl, V.VFIO_DEVICE_FEATURE, V.device_feature(
        V.VFIO_DEVICE_FEATURE_PROBE | V.VFIO_DEVICE_FEATURE_SET | F))  # GET only
    raises(errno.EINVAL, export, dev, 0, [(0, PAGE)],
           feature_flags=V.VFIO_DEVICE_FEATURE_SET | F)
    raises(errno.EINVAL, dev.ioctl, V.VFIO_DEVICE_FEATURE,
           V.device_feature(V.VFIO_DEVICE_FEATURE_GET | F, b"\0" * 8))  # short of the struct


def test_dma_buf_checks_in_the_kernels_order(dmabuf_edu):
    host, _, dev = dmabuf_edu
    raises(errno.EINVAL, export, dev, 0, [])  # (3) nr_ranges 0
    raises(errno.EINVAL, export, dev, 0, [(0, PAGE)], flags=1)  # (3) flags
    raises(errno.EINVAL, export, dev, 7, [])  # (3) before (4): region 7 with no range
    for region in (6, 7, 8):  # (4) not a BAR
        raises(errno.ENODEV, export, dev, region, [(0, PAGE)])
    raises(errno.ENODEV, export, dev, 7, [(0, 0)])  # (4) before (5)
    raises(errno.EINVAL, export, dev, 0, [(0, 0)])  # (5) a range of length 0
    raises(errno.EINVAL, export, dev, 0, [(0, 100)])  # (5) not page aligned
    raises(errno.EINVAL, export, dev, 0, [(100, PAGE)])
    raises(errno.EINVAL, export, dev, 0, [(0, 1 << 63)])  # (5) total reaches bit 63
    if kernel_version(host) >= (7, 1):  # (4) vfio holds no iomap of BAR1 (and in 7.0.y)
        raises(errno.ENODEV, export, dev, 1, [(0, PAGE)])
        raises(errno.ENODEV, export, dev, 1, [(0, 100)])  # before (5)
    else:  # (6) BAR1 has no p2pdma provider
        raises(errno.EINVAL, export, dev, 1, [(0, PAGE)])
    raises(errno.EOVERFLOW, export, dev, 0, [((1 << 64) - PAGE, 2 * PAGE)])  # (6) wraps
    raises(errno.EINVAL, export, dev, 0, [(0, 2 * MiB)])  # (6) past the BAR
    raises(errno.EINVAL, export, dev, 0, [(0, PAGE), (MiB - PAGE, 2 * PAGE)])
    fd = export(dev, 0, [(0, PAGE), (MiB - PAGE, PAGE)])
    assert fd >= 0
    host.close(fd)


def test_dma_buf_export_with_memory_disabled_and_close(dmabuf_edu):
    host, _, dev = dmabuf_edu
    dev.set_command(memory=False)
    buf = dev.dma_buf(0, [(0, MiB)])  # exported revoked; succeeds all the same
    assert buf.size == MiB
    dev.set_command(memory=True)
    buf.close()
