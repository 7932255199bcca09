"""VFIO for a VMM: a PCI device through its cdev (/dev/vfio/devices/vfioN) bound to iommufd,
or through the legacy group and container, in the shape of rust-vmm's vfio-ioctls and QEMU's
hw/vfio (iommufd.c, container.c, pci.c).

:class:`VfioDevice` is one open device fd (vfio-ioctls' ``VfioDevice``): ``bind`` is
VFIO_DEVICE_BIND_IOMMUFD, ``attach``/``detach`` VFIO_DEVICE_ATTACH/DETACH_IOMMUFD_PT,
``get_info`` VFIO_DEVICE_GET_INFO, ``region``/``regions`` VFIO_DEVICE_GET_REGION_INFO
(:class:`Region` objects), ``irq_info`` VFIO_DEVICE_GET_IRQ_INFO, ``config_read``/
``config_write`` pread/pwrite of the config region, ``reset`` VFIO_DEVICE_RESET and
``dma_buf`` VFIO_DEVICE_FEATURE_DMA_BUF (a :class:`VfioDmaBuf`, an fd). A :class:`Region`
reads and writes with pread/pwrite at its file offset (``index << 40`` for vfio-pci) and
``mmap`` gives a passthru.vmm :class:`~passthru.vmm.memory.Mapping`. The legacy path:
:class:`VfioContainer` (/dev/vfio/vfio: SET_IOMMU, type1 MAP_DMA/UNMAP_DMA) and
:class:`VfioGroup` (/dev/vfio/<group>: GET_STATUS, SET/UNSET_CONTAINER, GET_DEVICE_FD, which
gives a VfioDevice that needs no bind).

:func:`assign_device` is the flow a VMM writes (QEMU's vfio_realize plus the BAR part of
vfio_region_mmap and kvm_set_user_memory_region): bind, attach to an IOAS, map the guest's
RAM into it at IOVA == GPA, and put each BAR into the guest's physical address space by one
of two routes — ``"legacy"`` (mmap the BAR, register the mapping as an ordinary memslot: KVM
follows the VM_PFNMAP PTE) or ``"dmabuf"`` (export the BAR as a vfio dma-buf and register a
KVM_MEM_VFIO_DMABUF memslot over it: the proposed uAPI of passthru.uapi.proposed, on the
model's rfc-* profiles); ``"auto"`` tries the dma-buf route and falls back to the legacy one
when the kernel refuses it (ENOTTY: no DMA_BUF feature; EINVAL: no such memslot flag, or a
BAR without a p2p provider; EOPNOTSUPP). It returns an :class:`Assignment` holding what the
VMM needs (devid, HWPT id, the BAR slots and the objects behind them); closing it undoes
everything in reverse.

Kernel side: drivers/vfio/vfio_main.c, device_cdev.c, group.c, container.c,
vfio_iommu_type1.c, pci/vfio_pci_core.c, pci/vfio_pci_rdwr.c, pci/vfio_pci_dmabuf.c. Only the
Host protocol and passthru.uapi are used, so the code runs unchanged on SimHost and
LinuxHost. Ownership (passthru.vmm._resource): a device owns its BAR mappings, dma-bufs and
assignments; a group owns the device fds it handed out; ``close`` releases them newest first.
Units: bytes; region offsets are file offsets. Errors: the host's OSError with the kernel's
errno, unchanged; misuse of a wrapper (closed, bad argument) is ValueError.
Left out: interrupts (SET_IRQS, eventfds), migration and dirty tracking, hot reset, the
capability chains of region info, VF tokens, sparse mmap and the MSI-X table hole.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..host.protocol import Host
from ..uapi import kvm as K
from ..uapi import linux as L
from ..uapi import proposed as P
from ..uapi import vfio as V
from ._resource import Resource
from .iommufd import Hwpt, Ioas, Iommufd
from .memory import PROT_RW, Mapping

if TYPE_CHECKING:
    from .kvm import Vm
    from .memory import GuestMemory

__all__ = ["Assignment", "BarSlot", "DeviceInfo", "IrqInfo", "Region", "VfioContainer",
           "VfioDevice", "VfioDmaBuf", "VfioGroup", "assign_device"]

PAGE_SIZE = L.PAGE_SIZE
CONFIG_INDEX = V.VFIO_PCI_CONFIG_REGION_INDEX
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
_FALLBACK_ERRNOS = (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)


def _sized(struct: type[ctypes.Structure], **fields: Any) -> Any:
    return struct(argsz=ctypes.sizeof(struct), **fields)


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class DeviceInfo:
    """VFIO_DEVICE_GET_INFO: ``flags`` VFIO_DEVICE_FLAGS_* and the region and IRQ counts."""

    flags: int
    num_regions: int
    num_irqs: int

    @property
    def is_pci(self) -> bool:
        """Whether the device is a PCI device (VFIO_DEVICE_FLAGS_PCI)."""
        return bool(self.flags & V.VFIO_DEVICE_FLAGS_PCI)

    @property
    def can_reset(self) -> bool:
        """Whether VFIO_DEVICE_RESET can work (VFIO_DEVICE_FLAGS_RESET)."""
        return bool(self.flags & V.VFIO_DEVICE_FLAGS_RESET)


@dataclass(frozen=True)
class IrqInfo:
    """VFIO_DEVICE_GET_IRQ_INFO of one index: ``flags`` VFIO_IRQ_INFO_*, ``count`` vectors."""

    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        """Whether the interrupt can be signalled through an eventfd (VFIO_IRQ_INFO_EVENTFD)."""
        return bool(self.flags & V.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        """Whether the interrupt can be masked (VFIO_IRQ_INFO_MASKABLE: INTx)."""
        return bool(self.flags & V.VFIO_IRQ_INFO_MASKABLE)


class Region:
    """One region of a device (VFIO_DEVICE_GET_REGION_INFO): ``index``, ``size``, ``flags``
    (VFIO_REGION_INFO_FLAG_*), ``offset`` (its file offset), ``cap_offset``. Reads and writes
    are pread/pwrite of the device fd at ``offset + off``."""

    def __init__(self, device: VfioDevice, index: int, size: int, flags: int, offset: int,
                 cap_offset: int = 0) -> None:
        self.device = device
        self.index = index
        self.size = size
        self.flags = flags
        self.offset = offset
        self.cap_offset = cap_offset

    def __repr__(self) -> str:
        return (f"<Region {self.index} size={self.size:#x} flags={self.flags:#x} "
                f"offset={self.offset:#x}>")

    @property
    def readable(self) -> bool:
        """VFIO_REGION_INFO_FLAG_READ."""
        return bool(self.flags & V.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        """VFIO_REGION_INFO_FLAG_WRITE."""
        return bool(self.flags & V.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        """VFIO_REGION_INFO_FLAG_MMAP."""
        return bool(self.flags & V.VFIO_REGION_INFO_FLAG_MMAP)

    def read(self, off: int, n: int) -> bytes:
        """pread of ``n`` bytes at ``off`` into the region (the kernel may return fewer at the
        region's end; a BAR read with memory disabled is EIO)."""
        return self.device.read(self.offset + off, n)

    def write(self, off: int, data: bytes) -> int:
        """pwrite of ``data`` at ``off`` into the region; the bytes written."""
        return self.device.write(self.offset + off, data)

    def read_int(self, off: int, size: int) -> int:
        """One little-endian access of ``size`` bytes (1, 2, 4 or 8) at ``off``."""
        return int.from_bytes(self.read(off, size), "little")

    def write_int(self, off: int, size: int, val: int) -> None:
        """One little-endian store of ``size`` bytes at ``off``."""
        self.write(off, (val & ((1 << 8 * size) - 1)).to_bytes(size, "little"))

    def mmap(self, length: int | None = None, off: int = 0, prot: int = PROT_RW) -> Mapping:
        """mmap (MAP_SHARED) ``length`` bytes (default: the page-rounded region from ``off``)
        of the region; the Mapping is owned by the device. Touching it while the device's
        memory is disabled is SIGBUS (passthru.Fault on SimHost)."""
        if length is None:
            length = _page_up(self.size) - off
        return self.device.mmap(self.offset + off, length, prot)


class VfioDmaBuf(Resource):
    """A dma-buf fd exported from a device region (VFIO_DEVICE_FEATURE_DMA_BUF): ``fd``,
    ``region`` index, ``ranges`` (offset, length) and ``size`` (their sum). ``close`` closes
    the fd; usable wherever an int fd is (``__index__``)."""

    def __init__(self, host: Host, fd: int, region: int, ranges: list[tuple[int, int]]) -> None:
        super().__init__(host)
        self.fd = fd
        self.region = region
        self.ranges = ranges
        self.size = sum(n for _, n in ranges)

    def __repr__(self) -> str:
        return f"<VfioDmaBuf fd={self.fd} region={self.region} size={self.size:#x}>"

    def __index__(self) -> int:
        return self.fd

    def _release(self) -> None:
        self.host.close(self.fd)


class VfioDevice(Resource):
    """One open VFIO device (rust-vmm ``VfioDevice``; QEMU ``VFIODevice``): the cdev ``path``
    opened O_RDWR | O_CLOEXEC, or an ``fd`` already open (a group's device fd: bound from
    the start)."""

    def __init__(self, host: Host, path: str = "/dev/vfio/devices/vfio0", *,
                 fd: int | None = None) -> None:
        super().__init__(host)
        self.path = path
        self.fd = int(host.open(path, L.O_RDWR | L.O_CLOEXEC)) if fd is None else fd
        self.devid: int | None = None
        self.hwpt_id: int | None = None
        self.iommufd: Iommufd | None = None
        self._legacy = fd is not None

    def __repr__(self) -> str:
        return f"<VfioDevice {self.path} fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    @property
    def bound(self) -> bool:
        """Whether the fd may be used: bound to an iommufd (cdev) or from a group."""
        return self._legacy or self.devid is not None

    def ioctl(self, request: int, arg: Any = 0) -> int:
        """One ioctl on the device fd (the host's OSError propagates unchanged)."""
        self._check_open()
        return int(self.host.ioctl(self.fd, request, arg))

    # -- iommufd ---------------------------------------------------------------------------
    def bind(self, iommufd: Iommufd | int) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD (QEMU ``iommufd_cdev_connect_and_bind``): the devid, the
        device's id in the iommufd (what IOMMU_HWPT_ALLOC and GET_HW_INFO take)."""
        ifd = iommufd.fd if isinstance(iommufd, Iommufd) else int(iommufd)
        cmd = _sized(V.vfio_device_bind_iommufd, iommufd=ifd)
        self.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, cmd)
        self.devid = int(cmd.out_devid)
        self.iommufd = iommufd if isinstance(iommufd, Iommufd) else None
        return self.devid

    def attach(self, pt: Ioas | Hwpt | int, pasid: int | None = None) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS (the kernel makes or reuses a paging
        HWPT) or a HWPT, replacing any earlier attachment; with ``pasid`` for that PASID.
        The HWPT id now in use (kept in ``hwpt_id`` for the RID)."""
        pt_id = pt.id if isinstance(pt, (Ioas, Hwpt)) else int(pt)
        cmd = _sized(V.vfio_device_attach_iommufd_pt, pt_id=pt_id)
        if pasid is not None:
            cmd.flags, cmd.pasid = V.VFIO_DEVICE_ATTACH_PASID, pasid
        self.ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, cmd)
        if pasid is None:
            self.hwpt_id = int(cmd.pt_id)
        return int(cmd.pt_id)

    def detach(self, pasid: int | None = None) -> None:
        """VFIO_DEVICE_DETACH_IOMMUFD_PT (of the RID, or of ``pasid``): the device is blocked."""
        cmd = _sized(V.vfio_device_detach_iommufd_pt)
        if pasid is not None:
            cmd.flags, cmd.pasid = V.VFIO_DEVICE_DETACH_PASID, pasid
        self.ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, cmd)
        if pasid is None:
            self.hwpt_id = None

    # -- information -------------------------------------------------------------------------
    def get_info(self) -> DeviceInfo:
        """VFIO_DEVICE_GET_INFO."""
        cmd = _sized(V.vfio_device_info)
        self.ioctl(V.VFIO_DEVICE_GET_INFO, cmd)
        return DeviceInfo(int(cmd.flags), int(cmd.num_regions), int(cmd.num_irqs))

    def region(self, index: int) -> Region:
        """VFIO_DEVICE_GET_REGION_INFO of ``index`` (EINVAL for a region the device lacks)."""
        cmd = _sized(V.vfio_region_info, index=index)
        self.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, cmd)
        return Region(self, index, int(cmd.size), int(cmd.flags), int(cmd.offset),
                      int(cmd.cap_offset))

    def regions(self) -> list[Region]:
        """Every region GET_INFO counts, skipping indexes the kernel refuses with EINVAL
        (vfio-pci's VGA region of a non-VGA device), as QEMU's vfio_populate_device does."""
        out = []
        for i in range(self.get_info().num_regions):
            try:
                out.append(self.region(i))
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        return out

    def irq_info(self, index: int) -> IrqInfo:
        """VFIO_DEVICE_GET_IRQ_INFO of ``index`` (VFIO_PCI_*_IRQ_INDEX)."""
        cmd = _sized(V.vfio_irq_info, index=index)
        self.ioctl(V.VFIO_DEVICE_GET_IRQ_INFO, cmd)
        return IrqInfo(index, int(cmd.flags), int(cmd.count))

    # -- access ----------------------------------------------------------------------------
    def read(self, offset: int, n: int) -> bytes:
        """pread of the device fd at file ``offset`` (a region's offset plus the position)."""
        self._check_open()
        return bytes(self.host.pread(self.fd, n, offset))

    def write(self, offset: int, data: bytes) -> int:
        """pwrite of the device fd at file ``offset``; the bytes written."""
        self._check_open()
        return int(self.host.pwrite(self.fd, bytes(data), offset))

    def mmap(self, offset: int, length: int, prot: int = PROT_RW) -> Mapping:
        """mmap (MAP_SHARED) ``length`` bytes of the device fd at file ``offset``; the Mapping
        is owned by this device."""
        self._check_open()
        addr = int(self.host.mmap(0, length, prot, L.MAP_SHARED, self.fd, offset))
        return self._adopt(Mapping(self.host, addr, length))

    def config_read(self, off: int, size: int) -> int:
        """A ``size``-byte little-endian read of config space at ``off`` (as the guest sees
        it: vfio-pci's virtual bits merged with the device's)."""
        raw = self.read(V.vfio_pci_index_to_offset(CONFIG_INDEX) + off, size)
        return int.from_bytes(raw, "little")

    def config_write(self, off: int, size: int, val: int) -> None:
        """A ``size``-byte little-endian write of config space at ``off``."""
        data = (val & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        self.write(V.vfio_pci_index_to_offset(CONFIG_INDEX) + off, data)

    def set_command(self, memory: bool | None = None, master: bool | None = None) -> int:
        """Set or clear COMMAND.MEMORY (MSE) and COMMAND.MASTER (BME); None keeps a bit. The
        new COMMAND as read back."""
        cmd = self.config_read(PCI_COMMAND, 2)
        for bit, on in ((PCI_COMMAND_MEMORY, memory), (PCI_COMMAND_MASTER, master)):
            if on is not None:
                cmd = cmd | bit if on else cmd & ~bit
        self.config_write(PCI_COMMAND, 2, cmd)
        return self.config_read(PCI_COMMAND, 2)

    def reset(self) -> None:
        """VFIO_DEVICE_RESET (EINVAL when the device has no reset method, as QEMU's edu)."""
        self.ioctl(V.VFIO_DEVICE_RESET)

    def dma_buf(self, region: int, ranges: Iterable[tuple[int, int]],
                open_flags: int = L.O_RDWR | L.O_CLOEXEC) -> VfioDmaBuf:
        """VFIO_DEVICE_FEATURE_DMA_BUF (GET): export ``ranges`` ((offset, length) pairs,
        page aligned) of BAR ``region`` as a dma-buf; owned by this device. ENOTTY on a
        kernel without the feature (before 6.19)."""
        rs = [(int(o), int(n)) for o, n in ranges]
        fd = self.ioctl(V.VFIO_DEVICE_FEATURE, V.feature_dma_buf(region, rs, open_flags))
        return self._adopt(VfioDmaBuf(self.host, fd, region, rs))

    def feature_probe(self, feature: int) -> bool:
        """VFIO_DEVICE_FEATURE with PROBE|GET: whether the device supports ``feature``."""
        arg = V.device_feature(V.VFIO_DEVICE_FEATURE_PROBE | V.VFIO_DEVICE_FEATURE_GET
                               | feature)
        try:
            self.ioctl(V.VFIO_DEVICE_FEATURE, arg)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                return False
            raise
        return True


# -- the legacy path ---------------------------------------------------------------------------
class VfioContainer(Resource):
    """/dev/vfio/vfio (QEMU's legacy ``VFIOContainer``; rust-vmm ``VfioContainer``)."""

    def __init__(self, host: Host, path: str = "/dev/vfio/vfio") -> None:
        super().__init__(host)
        self.path = path
        self.fd = int(host.open(path, L.O_RDWR | L.O_CLOEXEC))

    def __repr__(self) -> str:
        return f"<VfioContainer fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def ioctl(self, request: int, arg: Any = 0) -> int:
        """One ioctl on the container fd."""
        self._check_open()
        return int(self.host.ioctl(self.fd, request, arg))

    def api_version(self) -> int:
        """VFIO_GET_API_VERSION (VFIO_API_VERSION, 0)."""
        return self.ioctl(V.VFIO_GET_API_VERSION)

    def check_extension(self, ext: int) -> int:
        """VFIO_CHECK_EXTENSION: 0 when ``ext`` (an IOMMU type or feature) is absent."""
        return self.ioctl(V.VFIO_CHECK_EXTENSION, ext)

    def set_iommu(self, kind: int = V.VFIO_TYPE1v2_IOMMU) -> None:
        """VFIO_SET_IOMMU (needs a group in the container first)."""
        self.ioctl(V.VFIO_SET_IOMMU, kind)

    def map_dma(self, vaddr: int, iova: int, size: int, readable: bool = True,
                writeable: bool = True) -> None:
        """VFIO_IOMMU_MAP_DMA of user memory ``[vaddr, +size)`` at ``iova`` (pinned)."""
        flags = ((V.VFIO_DMA_MAP_FLAG_READ if readable else 0)
                 | (V.VFIO_DMA_MAP_FLAG_WRITE if writeable else 0))
        self.ioctl(V.VFIO_IOMMU_MAP_DMA, _sized(V.vfio_iommu_type1_dma_map, flags=flags,
                                                vaddr=vaddr, iova=iova, size=size))

    def unmap_dma(self, iova: int, size: int, flags: int = 0) -> int:
        """VFIO_IOMMU_UNMAP_DMA of ``[iova, +size)`` (``flags`` VFIO_DMA_UNMAP_FLAG_ALL with
        iova and size 0: everything); the bytes unmapped."""
        cmd = _sized(V.vfio_iommu_type1_dma_unmap, flags=flags, iova=iova, size=size)
        self.ioctl(V.VFIO_IOMMU_UNMAP_DMA, cmd)
        return int(cmd.size)


class VfioGroup(Resource):
    """/dev/vfio/<group> (QEMU ``VFIOGroup``; rust-vmm ``VfioGroup``); owns the device fds
    it hands out."""

    def __init__(self, host: Host, path: str) -> None:
        super().__init__(host)
        self.path = path
        self.fd = int(host.open(path, L.O_RDWR | L.O_CLOEXEC))

    def __repr__(self) -> str:
        return f"<VfioGroup {self.path} fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def ioctl(self, request: int, arg: Any = 0) -> int:
        """One ioctl on the group fd."""
        self._check_open()
        return int(self.host.ioctl(self.fd, request, arg))

    def status(self) -> int:
        """VFIO_GROUP_GET_STATUS: VFIO_GROUP_FLAGS_VIABLE | CONTAINER_SET bits."""
        cmd = _sized(V.vfio_group_status)
        self.ioctl(V.VFIO_GROUP_GET_STATUS, cmd)
        return int(cmd.flags)

    def set_container(self, container: VfioContainer | int) -> None:
        """VFIO_GROUP_SET_CONTAINER (the argument points at the container's fd)."""
        cfd = container.fd if isinstance(container, VfioContainer) else int(container)
        self.ioctl(V.VFIO_GROUP_SET_CONTAINER, bytearray(ctypes.c_int32(cfd)))

    def unset_container(self) -> None:
        """VFIO_GROUP_UNSET_CONTAINER (EBUSY while a device fd is open)."""
        self.ioctl(V.VFIO_GROUP_UNSET_CONTAINER)

    def get_device(self, name: str) -> VfioDevice:
        """VFIO_GROUP_GET_DEVICE_FD of ``name`` (a PCI BDF): a VfioDevice usable at once."""
        fd = self.ioctl(V.VFIO_GROUP_GET_DEVICE_FD, bytearray(name.encode() + b"\0"))
        return self._adopt(VfioDevice(self.host, f"{self.path}:{name}", fd=fd))


# -- assignment ----------------------------------------------------------------------------------
@dataclass
class BarSlot:
    """One BAR in the guest: region ``index`` at guest-physical ``gpa`` in memslot ``slot``
    (``size`` bytes, page-rounded), by ``route`` "legacy" (``mapping`` is the BAR's mmap, the
    slot's userspace_addr) or "dmabuf" (``dmabuf`` backs a KVM_MEM_VFIO_DMABUF slot)."""

    index: int
    gpa: int
    size: int
    slot: int
    route: str
    mapping: Mapping | None = None
    dmabuf: VfioDmaBuf | None = None

    def contains(self, gpa: int, n: int = 1) -> bool:
        """Whether guest-physical [gpa, gpa + n) lies inside this BAR's slot."""
        return self.gpa <= gpa and gpa + n <= self.gpa + self.size


class Assignment(Resource):
    """What :func:`assign_device` set up: ``device``, ``devid``, ``hwpt_id``, the IOAS
    ``iovas`` it mapped (IOVA, length), and ``bars`` (BarSlot). ``close`` deletes the BAR
    slots, releases their mappings and dma-bufs, unmaps the IOVAs and detaches the device
    (steps whose owner is already closed are skipped), newest first."""

    def __init__(self, vm: Vm, device: VfioDevice, ioas: Ioas, hwpt_id: int) -> None:
        super().__init__(vm.host)
        self.vm = vm
        self.device = device
        self.ioas = ioas
        self.devid = device.devid
        self.hwpt_id = hwpt_id
        self.iovas: list[tuple[int, int]] = []
        self.bars: list[BarSlot] = []

    def __repr__(self) -> str:
        return f"<Assignment {self.device.path} hwpt={self.hwpt_id} bars={len(self.bars)}>"

    def bar(self, index: int) -> BarSlot:
        """The BarSlot of region ``index`` (KeyError if it was not put into the guest)."""
        for b in self.bars:
            if b.index == index:
                return b
        raise KeyError(index)

    def _release(self) -> None:
        errors: list[OSError] = []

        def run(fn: Any) -> None:
            try:
                fn()
            except OSError as e:
                errors.append(e)

        for b in reversed(self.bars):
            if not self.vm.closed:
                run(lambda b=b: _set_slot(self.vm, b.slot, b.gpa, 0, 0, 0, 0))
            for res in (b.mapping, b.dmabuf):
                if res is not None:
                    run(res.close)
        self.bars = []
        if not self.ioas.closed:
            for iova, n in reversed(self.iovas):
                run(lambda iova=iova, n=n: self.ioas.unmap(iova, n))
        self.iovas = []
        if not self.device.closed and self.device.hwpt_id is not None:
            run(self.device.detach)
        if errors:
            raise errors[0]


def _set_slot(vm: Vm, slot: int, gpa: int, size: int, uaddr: int, flags: int, fd: int) -> None:
    """KVM_SET_USER_MEMORY_REGION2 with the raw fields (a dma-buf slot passes its fd in
    ``guest_memfd`` without KVM_MEM_GUEST_MEMFD, which Vm.set_user_memory_region adds)."""
    vm._check_open()
    arg = K.kvm_userspace_memory_region2(slot=slot, flags=flags, guest_phys_addr=gpa,
                                         memory_size=size, userspace_addr=uaddr,
                                         guest_memfd=fd & 0xFFFFFFFF)
    vm.host.ioctl(vm.fd, K.KVM_SET_USER_MEMORY_REGION2, arg)


def _dmabuf_bar(vm: Vm, device: VfioDevice, region: Region, gpa: int, slot: int) -> BarSlot:
    size = _page_up(region.size)
    buf = device.dma_buf(region.index, [(0, size)])
    try:
        _set_slot(vm, slot, gpa, size, 0, P.KVM_MEM_VFIO_DMABUF, buf.fd)
    except BaseException:
        buf.close()
        raise
    return BarSlot(region.index, gpa, size, slot, "dmabuf", dmabuf=buf)


def _legacy_bar(vm: Vm, region: Region, gpa: int, slot: int) -> BarSlot:
    size = _page_up(region.size)
    mapping = region.mmap(size)
    try:
        _set_slot(vm, slot, gpa, size, mapping.addr, 0, 0)
    except BaseException:
        mapping.close()
        raise
    return BarSlot(region.index, gpa, size, slot, "legacy", mapping=mapping)


def assign_device(vm: Vm, device: VfioDevice, ioas: Ioas, *,
                  bars: dict[int, int] | None = None,
                  guest_memory: GuestMemory | None = None,
                  route: str = "auto", first_slot: int = 16,
                  bus_master: bool = True) -> Assignment:
    """Assign ``device`` to ``vm`` the way a VMM does: bind it to ``ioas``'s iommufd (unless
    already bound), attach it to ``ioas``, map every region of ``guest_memory`` into the IOAS
    at IOVA == GPA (the device's DMA then reaches guest RAM), turn on memory decoding and
    (``bus_master``) bus mastering, and put each BAR of ``bars`` ({region index: gpa}) into
    the guest at that gpa by ``route`` — "legacy", "dmabuf" or "auto" (the dma-buf slot when
    the kernel takes it, else legacy) — in memslots from ``first_slot``. The Assignment is
    owned by the device; if a step fails, what was done is undone and the error propagates."""
    if route not in ("auto", "legacy", "dmabuf"):
        raise ValueError(f"assign_device: route {route!r} is not auto, legacy or dmabuf")
    if not device.bound:
        device.bind(ioas.iommufd)
    hwpt_id = device.attach(ioas)
    asg = Assignment(vm, device, ioas, hwpt_id)
    try:
        for r in (guest_memory.regions if guest_memory is not None else []):
            ioas.map(r.view.addr, r.size, iova=r.gpa)
            asg.iovas.append((r.gpa, r.size))
        device.set_command(memory=True, master=bus_master)
        for i, (index, gpa) in enumerate(sorted((bars or {}).items())):
            region = device.region(index)
            if not region.mmappable and route != "dmabuf":
                raise ValueError(f"assign_device: region {index} cannot be mmapped")
            slot = first_slot + i
            if route == "legacy":
                asg.bars.append(_legacy_bar(vm, region, gpa, slot))
                continue
            try:
                asg.bars.append(_dmabuf_bar(vm, device, region, gpa, slot))
            except OSError as e:
                if route == "dmabuf" or e.errno not in _FALLBACK_ERRNOS:
                    raise
                asg.bars.append(_legacy_bar(vm, region, gpa, slot))
    except BaseException:
        try:
            asg._release()
        except OSError:
            pass  # the first error is the one to report
        raise
    return device._adopt(asg)
