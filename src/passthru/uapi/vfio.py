"""ctypes mirror of include/uapi/linux/vfio.h, as of Linux 7.3 (the parts passthru uses).

Mirrored: the container/group ioctls of the legacy API (VFIO_GET_API_VERSION ...
VFIO_GROUP_GET_DEVICE_FD) and the type1 IOMMU (VFIO_IOMMU_GET_INFO, VFIO_IOMMU_MAP_DMA,
VFIO_IOMMU_UNMAP_DMA); the device ioctls (info, region and IRQ info, SET_IRQS, reset,
PCI hot reset, VFIO_DEVICE_FEATURE with the feature numbers, the cdev's BIND_IOMMUFD,
ATTACH/DETACH_IOMMUFD_PT); the vfio-pci region and IRQ indices; and the dma-buf export
feature (VFIO_DEVICE_FEATURE_DMA_BUF, struct vfio_device_feature_dma_buf with its flexible
``dma_ranges`` of struct vfio_region_dma_range). Left out: mdev graphics planes,
ioeventfd, migration data structs, s390 (ccw, ap, zpci) and powerpc (spapr, eeh) parts.

All requests are ``_IO(VFIO_TYPE, VFIO_BASE + n)``: the size is not encoded; the first
u32 of an argument is ``argsz``. Note that several numbers are reused between the
container and the device fd (VFIO_BASE + 12 is VFIO_IOMMU_GET_INFO on a container and
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on a device): dispatch depends on the fd.

Flexible arrays (``data[]``, ``devices[]``, ``dma_ranges[]`` ...) are mirrored as
zero-length arrays, so the fixed part has the kernel's size and the array its offset;
``with_entries(struct, n)`` gives a ctypes type with room for n entries.
``feature_dma_buf()`` builds the whole VFIO_DEVICE_FEATURE argument for a dma-buf export.

Python-only (not in the uAPI header): VFIO_PCI_OFFSET_SHIFT and vfio_pci_index_to_offset,
vfio-pci's region offset encoding (include/linux/vfio_pci_core.h), which userspace should
read from vfio_region_info.offset instead of assuming.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from .ioctl import _IO, Struct, Union, with_entries

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

VFIO_API_VERSION = 0

# extensions (VFIO_CHECK_EXTENSION) and IOMMU types (VFIO_SET_IOMMU)
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100


class vfio_info_cap_header(Struct):
    _fields_ = [("id", _u16), ("version", _u16), ("next", _u32)]


# --- container and group (legacy API) ---


class vfio_group_status(Struct):
    _fields_ = [("argsz", _u32), ("flags", _u32)]


VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)

# --- device ---


class vfio_device_info(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("num_regions", _u32),
        ("num_irqs", _u32),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8

VFIO_DEVICE_API_PCI_STRING = "vfio-pci"

VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)


class vfio_region_info(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("cap_offset", _u32),
        ("size", _u64),
        ("offset", _u64),
    ]


VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1


class vfio_region_sparse_mmap_area(Struct):
    _fields_ = [("offset", _u64), ("size", _u64)]


class vfio_region_info_cap_sparse_mmap(Struct):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_areas", _u32),
        ("reserved", _u32),
        ("areas", vfio_region_sparse_mmap_area * 0),
    ]


VFIO_REGION_INFO_CAP_TYPE = 2


class vfio_region_info_cap_type(Struct):
    _fields_ = [("header", vfio_info_cap_header), ("type", _u32), ("subtype", _u32)]


VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3


class vfio_irq_info(Struct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("index", _u32), ("count", _u32)]


VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)


class vfio_irq_set(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("index", _u32),
        ("start", _u32),
        ("count", _u32),
        ("data", _u8 * 0),
    ]


VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = (
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD
)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER
)

VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)
VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)

# vfio-pci region indices (anonymous enum)
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# vfio-pci IRQ indices (anonymous enum)
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

# Python-only: include/linux/vfio_pci_core.h, not uAPI.
VFIO_PCI_OFFSET_SHIFT = 40


def vfio_pci_index_to_offset(index: int) -> int:
    """vfio-pci's region offset in the device fd (VFIO_PCI_INDEX_TO_OFFSET)."""
    return index << VFIO_PCI_OFFSET_SHIFT


class _vfio_pci_dependent_device_id(Union):
    _fields_ = [("group_id", _u32), ("devid", _u32)]


class vfio_pci_dependent_device(Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("u", _vfio_pci_dependent_device_id),
        ("segment", _u16),
        ("bus", _u8),
        ("devfn", _u8),
    ]


VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1


class vfio_pci_hot_reset_info(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("count", _u32),
        ("devices", vfio_pci_dependent_device * 0),
    ]


VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1

VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_pci_hot_reset(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("count", _u32),
        ("group_fds", _s32 * 0),
    ]


VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)

# --- VFIO_DEVICE_FEATURE ---


class vfio_device_feature(Struct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("data", _u8 * 0)]


VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18

VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)

# feature numbers (the low 16 bits of vfio_device_feature.flags)
VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10
VFIO_DEVICE_FEATURE_DMA_BUF = 11
VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 = 12
VFIO_DEVICE_FEATURE_ZPCI_ERROR = 13


class vfio_device_low_power_entry_with_wakeup(Struct):
    _fields_ = [("wakeup_eventfd", _s32), ("reserved", _u32)]


class vfio_region_dma_range(Struct):
    _fields_ = [("offset", _u64), ("length", _u64)]


class vfio_device_feature_dma_buf(Struct):
    _fields_ = [
        ("region_index", _u32),
        ("open_flags", _u32),
        ("flags", _u32),
        ("nr_ranges", _u32),
        ("dma_ranges", vfio_region_dma_range * 0),  # __counted_by(nr_ranges)
    ]


def device_feature(flags: int, payload: bytes | bytearray = b"") -> bytearray:
    """A VFIO_DEVICE_FEATURE argument: the header (argsz filled in) followed by payload."""
    head = vfio_device_feature(argsz=ctypes.sizeof(vfio_device_feature) + len(payload))
    head.flags = flags
    return bytearray(bytes(head) + bytes(payload))


def feature_dma_buf(
    region_index: int,
    ranges: Iterable[tuple[int, int]],
    open_flags: int,
    *,
    flags: int = 0,
    feature_flags: int = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF,
) -> bytearray:
    """The VFIO_DEVICE_FEATURE argument that exports (offset, length) ranges of a region.

    On success the ioctl returns the new dma-buf fd; its contents are the ranges in order.
    """
    rs = list(ranges)
    body_type = with_entries(vfio_device_feature_dma_buf, len(rs))
    body = body_type()
    body.region_index = region_index
    body.open_flags = open_flags
    body.flags = flags
    body.nr_ranges = len(rs)
    for i, (offset, length) in enumerate(rs):
        body.dma_ranges[i].offset = offset
        body.dma_ranges[i].length = length
    return device_feature(feature_flags, bytes(body))


# --- cdev: iommufd binding ---


class vfio_device_bind_iommufd(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iommufd", _s32),
        ("out_devid", _u32),
        ("token_uuid_ptr", _u64),
    ]


VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0

VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)


class vfio_device_attach_iommufd_pt(Struct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pt_id", _u32), ("pasid", _u32)]


VFIO_DEVICE_ATTACH_PASID = 1 << 0

VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)


class vfio_device_detach_iommufd_pt(Struct):
    _fields_ = [("argsz", _u32), ("flags", _u32), ("pasid", _u32)]


VFIO_DEVICE_DETACH_PASID = 1 << 0

VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)

# --- type1 IOMMU (container) ---


class vfio_iommu_type1_info(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova_pgsizes", _u64),
        ("cap_offset", _u32),
        ("pad", _u32),
    ]


VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1

VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1


class vfio_iova_range(Struct):
    _fields_ = [("start", _u64), ("end", _u64)]


class vfio_iommu_type1_info_cap_iova_range(Struct):
    _fields_ = [
        ("header", vfio_info_cap_header),
        ("nr_iovas", _u32),
        ("reserved", _u32),
        ("iova_ranges", vfio_iova_range * 0),
    ]


VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3


class vfio_iommu_type1_info_dma_avail(Struct):
    _fields_ = [("header", vfio_info_cap_header), ("avail", _u32)]


VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class vfio_iommu_type1_dma_map(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("vaddr", _u64),
        ("iova", _u64),
        ("size", _u64),
    ]


VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)


class vfio_bitmap(Struct):
    _fields_ = [
        ("pgsize", _u64),
        ("size", _u64),
        ("data", ctypes.POINTER(_u64)),
    ]


class vfio_iommu_type1_dma_unmap(Struct):
    _fields_ = [
        ("argsz", _u32),
        ("flags", _u32),
        ("iova", _u64),
        ("size", _u64),
        ("data", _u8 * 0),
    ]


VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2

VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16)
