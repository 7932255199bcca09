"""The legacy VFIO path (kernel/vfio/group.py, container.py, vfio_iommu_type1.py): the
container and group ioctls with their errnos, type1's MAP/UNMAP semantics where they differ
from iommufd's compat container, and a type1 map followed by the device's DMA through it.

The device is the core's VfioDevice (no driver ops) with an iommu-core Device behind a hw
IOMMU unit; the group node is registered the way a probe at boot would."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

import pytest

from passthru import SimHost
from passthru.hw.iommu import Iommu
from passthru.kernel.iommu.iommufd.driver import Device, IommuDriver
from passthru.kernel.mm import mlock
from passthru.kernel.vfio import vfio_iommu_type1 as T1
from passthru.kernel.vfio.group import VfioGroupDeviceFile, vfio_device_set_group
from passthru.kernel.vfio.vfio_main import VfioDevice, vfio_assign_device_set
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

PAGE = 4096
BDF = "0000:00:03.0"
U64_MAX = (1 << 64) - 1


def err(e: int, fn: Any, *args: Any) -> OSError:
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == e, ei.value
    return ei.value


class Edu(VfioDevice):
    """A VFIO driver with just open/close, counting them."""

    def __init__(self, kernel: Any, name: str) -> None:
        super().__init__(kernel, name)
        self.opens = 0
        self.closes = 0

    def open_device(self) -> None:
        self.opens += 1

    def close_device(self) -> None:
        self.closes += 1


class Ctx:
    def __init__(self, profile: str = "linux-7.1", memlock: int | None = None) -> None:
        self.h = h = SimHost(profile=profile)
        k = h.kernel
        self.unit = Iommu(k.sched, k.phys, "dmar0")
        self.idev = Device(BDF, self.unit, IommuDriver(), is_pci=True)
        self.vdev = Edu(k, BDF)  # dev_name(): the BDF
        vfio_assign_device_set(self.vdev, BDF)
        k._booting = True  # the probe runs at boot: its node is registered then
        try:
            self.group = vfio_device_set_group(k, self.vdev, self.idev, 7)
        finally:
            k._booting = False
        if memlock is not None:
            h.proc.rlimit_memlock = memlock
            h.proc.caps = h.proc.caps - {"CAP_IPC_LOCK"}
        self.cfd = h.open("/dev/vfio/vfio", L.O_RDWR)
        self.gfd = h.open("/dev/vfio/7", L.O_RDWR)

    def status(self) -> int:
        st = V.vfio_group_status(argsz=ctypes.sizeof(V.vfio_group_status))
        self.h.ioctl(self.gfd, V.VFIO_GROUP_GET_STATUS, st)
        return int(st.flags)

    def set_container(self, fd: int | None = None) -> None:
        self.h.ioctl(self.gfd, V.VFIO_GROUP_SET_CONTAINER,
                     bytearray(ctypes.c_int32(self.cfd if fd is None else fd)))

    def setup(self) -> None:
        self.set_container()
        assert self.h.ioctl(self.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU) == 0

    def device_fd(self, name: str = BDF) -> int:
        return self.h.ioctl(self.gfd, V.VFIO_GROUP_GET_DEVICE_FD,
                            bytearray(name.encode() + b"\0"))

    def buffer(self, n: int) -> int:
        return self.h.mmap(0, n, L.PROT_READ | L.PROT_WRITE,
                           L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)

    def map(self, vaddr: int, iova: int, size: int,
            flags: int = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE,
            argsz: int | None = None) -> int:
        m = V.vfio_iommu_type1_dma_map(argsz=argsz if argsz is not None else
                                       ctypes.sizeof(V.vfio_iommu_type1_dma_map),
                                       flags=flags, vaddr=vaddr, iova=iova, size=size)
        return self.h.ioctl(self.cfd, V.VFIO_IOMMU_MAP_DMA, m)

    def unmap(self, iova: int, size: int, flags: int = 0) -> int:
        u = V.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(V.vfio_iommu_type1_dma_unmap),
                                         flags=flags, iova=iova, size=size)
        self.h.ioctl(self.cfd, V.VFIO_IOMMU_UNMAP_DMA, u)
        return int(u.size)

    def dma(self, iova: int, n: int, write: bool = False, data: bytes | None = None
            ) -> bytes | None:
        return self.unit.dma(BDF, iova, n, write, data)

    def finish(self) -> None:
        self.h.exit()
        assert self.h.leaks() == []
        assert self.h.kernel.sched.violations == []


# ----- container ------------------------------------------------------------------------------
def test_container_api_version_and_extensions() -> None:
    c = Ctx()
    h = c.h
    assert h.ioctl(c.cfd, V.VFIO_GET_API_VERSION) == V.VFIO_API_VERSION == 0
    for ext in (V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU, V.VFIO_UNMAP_ALL,
                V.VFIO_UPDATE_VADDR):
        assert h.ioctl(c.cfd, V.VFIO_CHECK_EXTENSION, ext) == 1
    for ext in (V.VFIO_SPAPR_TCE_IOMMU, V.VFIO_NOIOMMU_IOMMU, V.VFIO_DMA_CC_IOMMU, 99):
        assert h.ioctl(c.cfd, V.VFIO_CHECK_EXTENSION, ext) == 0
    err(errno.EINVAL, h.ioctl, c.cfd, V.VFIO_IOMMU_GET_INFO,
        V.vfio_iommu_type1_info(argsz=ctypes.sizeof(V.vfio_iommu_type1_info)))
    err(errno.EINVAL, h.ioctl, c.cfd, V.VFIO_IOMMU_MAP_DMA, V.vfio_iommu_type1_dma_map())
    c.setup()
    assert h.ioctl(c.cfd, V.VFIO_CHECK_EXTENSION, V.VFIO_DMA_CC_IOMMU) == 1  # now with state
    c.finish()


def test_set_iommu_rules() -> None:
    c = Ctx()
    h = c.h
    err(errno.EINVAL, h.ioctl, c.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU)  # no group
    c.set_container()
    err(errno.ENODEV, h.ioctl, c.cfd, V.VFIO_SET_IOMMU, V.VFIO_SPAPR_TCE_IOMMU)
    err(errno.ENODEV, h.ioctl, c.cfd, V.VFIO_SET_IOMMU, 1234)
    err(errno.EINVAL, h.ioctl, c.cfd, V.VFIO_SET_IOMMU, V.VFIO_UNMAP_ALL)  # not a type
    assert h.ioctl(c.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU) == 0
    err(errno.EINVAL, h.ioctl, c.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU)  # already set
    dom = c.unit.domain_of(BDF)
    assert dom is not None and dom.kind == "paging"
    c.finish()


def test_get_info_pgsizes_and_capability_chain() -> None:
    c = Ctx()
    c.setup()
    info = V.vfio_iommu_type1_info(argsz=ctypes.sizeof(V.vfio_iommu_type1_info))
    c.h.ioctl(c.cfd, V.VFIO_IOMMU_GET_INFO, info)
    assert info.flags == V.VFIO_IOMMU_INFO_PGSIZES | V.VFIO_IOMMU_INFO_CAPS
    assert info.iova_pgsizes & -info.iova_pgsizes == PAGE
    need = info.argsz
    assert need > ctypes.sizeof(info) and info.cap_offset == 0
    buf = bytearray(need)
    hdr = V.vfio_iommu_type1_info.from_buffer(buf)
    hdr.argsz = need
    c.h.ioctl(c.cfd, V.VFIO_IOMMU_GET_INFO, buf)
    hdr = V.vfio_iommu_type1_info.from_buffer_copy(buf)
    off, caps = hdr.cap_offset, {}
    while off:
        ch = V.vfio_info_cap_header.from_buffer_copy(buf, off)
        caps[ch.id] = off
        off = ch.next
    avail = V.vfio_iommu_type1_info_dma_avail.from_buffer_copy(
        buf, caps[V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL])
    assert avail.avail == T1.DMA_ENTRY_LIMIT
    rng = V.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(
        buf, caps[V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE])
    assert rng.nr_iovas >= 2  # the MSI window splits the aperture
    short = V.vfio_iommu_type1_info(argsz=8)
    err(errno.EINVAL, c.h.ioctl, c.cfd, V.VFIO_IOMMU_GET_INFO, short)
    c.finish()


# ----- group ----------------------------------------------------------------------------------
def test_group_open_status_and_container_errnos() -> None:
    c = Ctx()
    h = c.h
    err(errno.EBUSY, h.open, "/dev/vfio/7", L.O_RDWR)
    assert c.status() == V.VFIO_GROUP_FLAGS_VIABLE
    err(errno.EINVAL, h.ioctl, c.gfd, V.VFIO_GROUP_GET_STATUS, V.vfio_group_status(argsz=4))
    err(errno.EINVAL, h.ioctl, c.gfd, V.VFIO_GROUP_UNSET_CONTAINER)  # none set
    err(errno.EBADF, c.set_container, 999)
    null = h.open("/dev/null", L.O_RDWR)
    err(errno.EBADFD, c.set_container, null)
    err(errno.EINVAL, c.device_fd)  # no container yet
    c.set_container()
    assert c.status() == V.VFIO_GROUP_FLAGS_VIABLE | V.VFIO_GROUP_FLAGS_CONTAINER_SET
    err(errno.EINVAL, c.set_container)  # already in one
    err(errno.EINVAL, c.device_fd)  # the container has no IOMMU driver yet
    err(errno.ENOTTY, h.ioctl, c.gfd, V.VFIO_DEVICE_RESET)
    assert h.ioctl(c.gfd, V.VFIO_GROUP_UNSET_CONTAINER) == 0
    assert c.status() == V.VFIO_GROUP_FLAGS_VIABLE
    c.finish()


def test_group_owned_by_another_is_not_viable_and_set_container_ebusy() -> None:
    c = Ctx()
    c.idev.claim_dma_owner("iommufd-ctx")  # the cdev bound it to an iommufd
    assert c.status() == 0
    err(errno.EBUSY, c.set_container)
    assert c.h.ioctl(c.cfd, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1v2_IOMMU) == 1
    c.idev.release_dma_owner()
    c.setup()
    c.finish()


def test_get_device_fd_behaves_like_the_bound_cdev() -> None:
    c = Ctx()
    h = c.h
    c.setup()
    err(errno.ENODEV, c.device_fd, "0000:00:04.0")
    dfd = c.device_fd()
    df = h.proc.fds[dfd]
    assert isinstance(df, VfioGroupDeviceFile) and df.granted()
    assert c.vdev.opens == 1 and c.group.container_users == 2
    # access granted from the start: the driver answers (no ops here: EINVAL), not the gate
    e = err(errno.EINVAL, h.ioctl, dfd, V.VFIO_DEVICE_RESET)
    assert "not bound" not in str(e)
    err(errno.EINVAL, h.ioctl, dfd, V.VFIO_DEVICE_BIND_IOMMUFD,
        V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd)))
    dfd2 = c.device_fd()  # a second open shares the first's open_device
    assert c.vdev.opens == 1 and c.vdev.open_count == 2
    err(errno.EBUSY, h.ioctl, c.gfd, V.VFIO_GROUP_UNSET_CONTAINER)
    h.close(c.gfd)  # the device files keep the group file
    assert c.group.opened_file is not None
    h.close(dfd)
    assert c.vdev.closes == 0
    h.close(dfd2)
    assert c.vdev.closes == 1
    assert c.group.opened_file is None and c.group.container is None  # group released
    assert c.unit.domain_of(BDF) is c.unit.blocked
    c.finish()


# ----- type1 MAP/UNMAP -----------------------------------------------------------------------
def test_map_errnos() -> None:
    c = Ctx()
    c.setup()
    va = c.buffer(8 * PAGE)
    rw = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE
    err(errno.EINVAL, c.map, va, 0x100000, PAGE, rw, 8)  # argsz
    err(errno.EINVAL, c.map, va, 0x100000, PAGE, rw | 0x80)  # unknown flag
    err(errno.EINVAL, c.map, va, 0x100000, 0)
    err(errno.EOVERFLOW, c.map, va, U64_MAX - PAGE + 2, PAGE)
    err(errno.EINVAL, c.map, va, 0x100000, PAGE, 0)  # neither READ nor WRITE
    err(errno.EINVAL, c.map, va + 1, 0x100000, PAGE)
    err(errno.EINVAL, c.map, va, 0x100001, PAGE)
    err(errno.EINVAL, c.map, va, 0x100000, PAGE + 1)
    err(errno.EINVAL, c.map, va, 0xFEE00000, PAGE)  # the MSI window is reserved
    err(errno.EFAULT, c.map, 0x10000000000, 0x100000, PAGE)  # nothing mapped there
    assert c.map(va, 0x100000, 4 * PAGE) == 0
    err(errno.EEXIST, c.map, va, 0x100000 + 3 * PAGE, 2 * PAGE)  # overlap
    err(errno.EEXIST, c.map, va, 0x100000 - PAGE, 2 * PAGE)
    assert c.map(va + 4 * PAGE, 0x100000 + 4 * PAGE, 4 * PAGE) == 0  # adjacent is fine
    c.finish()


def test_map_charges_locked_vm_and_respects_rlimit() -> None:
    c = Ctx(memlock=4 * PAGE)
    c.setup()
    va = c.buffer(8 * PAGE)
    err(errno.ENOMEM, c.map, va, 0, 8 * PAGE)
    assert mlock.charged(c.h.kernel, c.h.proc)[1] == 0
    assert c.map(va, 0, 4 * PAGE) == 0
    assert mlock.charged(c.h.kernel, c.h.proc)[1] == 4
    assert c.unmap(0, 4 * PAGE) == 4 * PAGE
    assert mlock.charged(c.h.kernel, c.h.proc)[1] == 0
    c.finish()


def test_unmap_semantics_differ_from_iommufd() -> None:
    c = Ctx()
    c.setup()
    va = c.buffer(8 * PAGE)
    base = 0x200000
    c.map(va, base, 2 * PAGE)
    c.map(va + 2 * PAGE, base + 2 * PAGE, 2 * PAGE)
    assert c.unmap(base + 8 * PAGE, PAGE) == 0  # nothing there: success, size 0
    err(errno.EINVAL, c.unmap, base + PAGE, PAGE)  # bisects the first mapping
    err(errno.EINVAL, c.unmap, base, 3 * PAGE)  # ends inside the second: nothing unmapped
    assert c.dma(base, 8) is not None  # still mapped (iommufd would have unmapped it)
    err(errno.EINVAL, c.unmap, base + 1, PAGE)
    err(errno.EINVAL, c.unmap, base, 0)
    err(errno.EOVERFLOW, c.unmap, U64_MAX - PAGE + 1, 2 * PAGE)
    err(errno.EINVAL, c.unmap, 0, PAGE, V.VFIO_DMA_UNMAP_FLAG_ALL)
    err(errno.EINVAL, c.unmap, base, PAGE, 0x100)
    assert c.unmap(base, 4 * PAGE) == 4 * PAGE  # both, whole
    c.map(va, base, 2 * PAGE)
    c.map(va, base + 4 * PAGE, PAGE)
    assert c.unmap(0, 0, V.VFIO_DMA_UNMAP_FLAG_ALL) == 3 * PAGE
    assert c.dma(base, 8) is None
    c.finish()


def test_type1_map_then_device_dma_through_it() -> None:
    c = Ctx()
    c.setup()
    dfd = c.device_fd()
    va = c.buffer(2 * PAGE)
    c.h.poke(va + 16, b"from the vmm")
    iova = 0x4000_0000
    c.map(va, iova, 2 * PAGE)
    assert c.dma(iova + 16, 12) == b"from the vmm"  # device reads guest memory
    assert c.dma(iova + PAGE, 6, True, b"device") == b""
    assert c.h.peek(va + PAGE, 6) == b"device"  # and the VMM sees the device's write
    read_only = c.buffer(PAGE)
    c.map(read_only, iova + 4 * PAGE, PAGE, V.VFIO_DMA_MAP_FLAG_READ)
    assert c.dma(iova + 4 * PAGE, 4, True, b"nope") is None  # no write permission
    assert c.unmap(iova, 2 * PAGE) == 2 * PAGE
    assert c.dma(iova + 16, 12) is None  # unmapped: the IOMMU faults
    c.h.close(dfd)
    c.finish()


def test_last_group_leaving_takes_every_mapping_and_pin() -> None:
    c = Ctx()
    c.setup()
    va = c.buffer(4 * PAGE)
    c.map(va, 0x100000, 4 * PAGE)
    pins = list(c.h.kernel.phys.pins)
    assert pins
    assert c.h.ioctl(c.gfd, V.VFIO_GROUP_UNSET_CONTAINER) == 0
    assert list(c.h.kernel.phys.pins) == [] and mlock.charged(c.h.kernel, c.h.proc)[1] == 0
    assert c.unit.domain_of(BDF) is c.unit.blocked
    err(errno.EINVAL, c.map, va, 0x100000, PAGE)  # the container is unset again
    c.setup()  # and can be set up again
    c.finish()


_CALLS: dict[str, Any] = {
    "set_container": lambda c, va: c.set_container(),
    "set_iommu": lambda c, va: c.h.ioctl(c.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU),
    "map": lambda c, va: c.map(va, 0x100000, 4 * PAGE),
    "get_device_fd": lambda c, va: c.device_fd(),
}


@pytest.mark.parametrize("what", sorted(_CALLS))
def test_fail_nth_changes_nothing(what: str) -> None:
    """Fail each fault point of one call in turn: ENOMEM, and the state is as before."""
    for n in range(1, 50):
        c = Ctx()
        va = c.buffer(4 * PAGE)
        if what != "set_container":
            c.set_container()
        if what in ("map", "get_device_fd"):
            c.h.ioctl(c.cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU)
        s = c.h.kernel.sched
        before = (dict(c.h.kernel.live), list(c.h.kernel.phys.pins), c.status(),
                  c.unit.domain_of(BDF), c.group.container_users)
        s.fail_nth = frozenset({s.faults_seen + n})
        call = _CALLS[what]
        try:
            call(c, va)
        except OSError as e:
            s.fail_nth = frozenset()
            assert e.errno == errno.ENOMEM and s.faults_failed, e
            after = (dict(c.h.kernel.live), list(c.h.kernel.phys.pins), c.status(),
                     c.unit.domain_of(BDF), c.group.container_users)
            assert after == before, (n, s.faults_failed)
            c.finish()
            continue
        s.fail_nth = frozenset()
        assert not s.faults_failed
        c.finish()
        assert n > 1 or what == "set_container"  # (no allocation without a driver)
        return
    raise AssertionError("never succeeded")


# ----- the default SimHost: the edu device bound to vfio-pci, through its group -------------------
def test_edu_dma_round_trip_through_a_type1_container() -> None:
    """What a stock distribution kernel offers (lane 2): group 0, container, type1 map, the
    device fd from the group, then the edu's DMA engine copying through the IOMMU."""
    import passthru.kernel.vfio.pci.vfio_pci as vp  # its initcall: until "vfio" is BUILTIN

    h = SimHost()
    vdev = vp.vfio_pci_devices(h.kernel)["edu0"]
    bdf = vdev.pdev.bdf
    cfd = h.open("/dev/vfio/vfio", L.O_RDWR)
    gfd = h.open("/dev/vfio/0", L.O_RDWR)
    h.ioctl(gfd, V.VFIO_GROUP_SET_CONTAINER, bytearray(ctypes.c_int32(cfd)))
    h.ioctl(cfd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU)
    dfd = h.ioctl(gfd, V.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))
    cfg = V.vfio_pci_index_to_offset(V.VFIO_PCI_CONFIG_REGION_INDEX)
    bar0 = V.vfio_pci_index_to_offset(0)
    assert int.from_bytes(h.pread(dfd, 4, bar0), "little") == 0x010000ED  # the edu's ID
    cmd = int.from_bytes(h.pread(dfd, 2, cfg + 4), "little")
    h.pwrite(dfd, (cmd | 0x4).to_bytes(2, "little"), cfg + 4)  # bus master on

    va = h.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE,
                L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    h.poke(va, b"type1-container!")
    m = V.vfio_iommu_type1_dma_map(argsz=ctypes.sizeof(V.vfio_iommu_type1_dma_map),
                                   flags=V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE,
                                   vaddr=va, iova=0x10_0000, size=4 * PAGE)
    h.ioctl(cfd, V.VFIO_IOMMU_MAP_DMA, m)

    def edu_dma(src: int, dst: int, n: int, to_ram: bool) -> None:
        for off, val in ((0x80, src), (0x88, dst), (0x90, n),
                         (0x98, 0x1 | (0x2 if to_ram else 0))):
            h.pwrite(dfd, val.to_bytes(8, "little"), bar0 + off)

    edu_dma(0x10_0000, 0x40000, 16, to_ram=False)  # RAM -> the edu's buffer
    edu_dma(0x40000, 0x10_0000 + PAGE, 16, to_ram=True)  # and back, one page further
    assert h.peek(va + PAGE, 16) == b"type1-container!"
    u = V.vfio_iommu_type1_dma_unmap(argsz=ctypes.sizeof(V.vfio_iommu_type1_dma_unmap),
                                     iova=0x10_0000, size=4 * PAGE)
    h.ioctl(cfd, V.VFIO_IOMMU_UNMAP_DMA, u)
    assert u.size == 4 * PAGE
    edu_dma(0x40000, 0x10_0000 + 2 * PAGE, 16, to_ram=True)  # unmapped: the IOMMU faults
    assert h.peek(va + 2 * PAGE, 16) == bytes(16)
    # the cdev cannot take the device while the group is open, with or without a device fd
    # from it (vfio_device_block_group EBUSY); once the group file is gone it can
    vfd = h.open("/dev/vfio/devices/vfio0", L.O_RDWR)
    ictx = h.open("/dev/iommu", L.O_RDWR)
    b = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                   iommufd=ictx)
    err(errno.EBUSY, h.ioctl, vfd, V.VFIO_DEVICE_BIND_IOMMUFD, b)
    h.close(dfd)
    err(errno.EBUSY, h.ioctl, vfd, V.VFIO_DEVICE_BIND_IOMMUFD, b)
    h.close(gfd)  # the release leaves the container: DMA ownership is free again
    assert h.ioctl(vfd, V.VFIO_DEVICE_BIND_IOMMUFD, b) == 0
    err(errno.EBUSY, h.open, "/dev/vfio/0", L.O_RDWR)  # bound through the cdev
    h.exit()
    assert h.leaks() == []
    assert [v.kind for v in h.kernel.sched.violations if v.kind != "iommu-fault"] == []
