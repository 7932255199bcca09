"""ctypes mirror of include/uapi/linux/iommufd.h (/dev/iommu), as of Linux 7.3.

Every command 0x80..0x95 of the 7.3 header with its argument struct, flags and enums
(enum values are module constants with the kernel's names; the enum each belongs to is
named in a comment). All requests are ``_IO(IOMMUFD_TYPE, nr)``: the size is not encoded
in the number; instead the first u32 of every argument is its ``size``, which the kernel
uses to extend structs compatibly (bytes past the known struct must be zero: E2BIG).

``__aligned_u64`` and ``__aligned_le64`` are plain u64 on x86-64 (already 8-aligned).
Pointers to user memory (``allowed_iovas``, ``data_uptr``, ``user_va``) are u64 addresses
in the calling process.

Not mirrored: nothing of the 7.3 header is left out except its comments.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, Struct, Union

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

IOMMUFD_TYPE = ord(";")

# anonymous enum: command numbers
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE = 0x8F
IOMMUFD_CMD_VIOMMU_ALLOC = 0x90
IOMMUFD_CMD_VDEVICE_ALLOC = 0x91
IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92
IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93
IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94
IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA = 0x95


class iommu_destroy(Struct):
    _fields_ = [("size", _u32), ("id", _u32)]


class iommu_ioas_alloc(Struct):
    _fields_ = [("size", _u32), ("flags", _u32), ("out_ioas_id", _u32)]


class iommu_iova_range(Struct):
    _fields_ = [("start", _u64), ("last", _u64)]


class iommu_ioas_iova_ranges(Struct):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _u64),
        ("out_iova_alignment", _u64),
    ]


class iommu_ioas_allow_iovas(Struct):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("num_iovas", _u32),
        ("__reserved", _u32),
        ("allowed_iovas", _u64),
    ]


# enum iommufd_ioas_map_flags
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_ioas_map(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("user_va", _u64),
        ("length", _u64),
        ("iova", _u64),
    ]


class iommu_ioas_noiommu_get_pa(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("__reserved", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("out_phys", _u64),
    ]


class iommu_ioas_map_file(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("ioas_id", _u32),
        ("fd", _s32),
        ("start", _u64),
        ("length", _u64),
        ("iova", _u64),
    ]


class iommu_ioas_copy(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dst_ioas_id", _u32),
        ("src_ioas_id", _u32),
        ("length", _u64),
        ("dst_iova", _u64),
        ("src_iova", _u64),
    ]


class iommu_ioas_unmap(Struct):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("iova", _u64),
        ("length", _u64),
    ]


# enum iommufd_option
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1

# enum iommufd_option_ops
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1


class iommu_option(Struct):
    _fields_ = [
        ("size", _u32),
        ("option_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
        ("object_id", _u32),
        ("val64", _u64),
    ]


# enum iommufd_vfio_ioas_op
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2


class iommu_vfio_ioas(Struct):
    _fields_ = [
        ("size", _u32),
        ("ioas_id", _u32),
        ("op", _u16),
        ("__reserved", _u16),
    ]


# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3

# enum iommu_hwpt_vtd_s1_flags
IOMMU_VTD_S1_SRE = 1 << 0
IOMMU_VTD_S1_EAFE = 1 << 1
IOMMU_VTD_S1_WPE = 1 << 2


class iommu_hwpt_vtd_s1(Struct):
    _fields_ = [
        ("flags", _u64),
        ("pgtbl_addr", _u64),
        ("addr_width", _u32),
        ("__reserved", _u32),
    ]


class iommu_hwpt_arm_smmuv3(Struct):
    _fields_ = [("ste", _u64 * 2)]  # __aligned_le64


class iommu_hwpt_amd_guest(Struct):
    _fields_ = [("dte", _u64 * 4)]


# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_DATA_ARM_SMMUV3 = 2
IOMMU_HWPT_DATA_AMD_GUEST = 3


class iommu_hwpt_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("pt_id", _u32),
        ("out_hwpt_id", _u32),
        ("__reserved", _u32),
        ("data_type", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("fault_id", _u32),
        ("__reserved2", _u32),
    ]


# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0


class iommu_hw_info_vtd(Struct):
    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("cap_reg", _u64),
        ("ecap_reg", _u64),
    ]


# enum iommu_hw_info_arm_smmuv3_flags
IOMMU_HW_INFO_ARM_SMMUV3_ERRATA_REPEAT_TLBI_CFGI = 1 << 0


class iommu_hw_info_arm_smmuv3(Struct):
    _fields_ = [
        ("flags", _u32),
        ("__reserved", _u32),
        ("idr", _u32 * 6),
        ("iidr", _u32),
        ("aidr", _u32),
    ]


class iommu_hw_info_tegra241_cmdqv(Struct):
    _fields_ = [
        ("flags", _u32),
        ("version", _u8),
        ("log2vcmdqs", _u8),
        ("log2vsids", _u8),
        ("__reserved", _u8),
    ]


class iommu_hw_info_amd(Struct):
    _fields_ = [("efr", _u64), ("efr2", _u64)]


# enum iommu_hw_info_type
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_DEFAULT = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3
IOMMU_HW_INFO_TYPE_AMD = 4

# enum iommufd_hw_capabilities
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2
IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3

# enum iommufd_hw_info_flags
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0


class _iommu_hw_info_data_type(Union):
    _fields_ = [("in_data_type", _u32), ("out_data_type", _u32)]


class iommu_hw_info(Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("dev_id", _u32),
        ("data_len", _u32),
        ("data_uptr", _u64),
        ("u", _iommu_hw_info_data_type),
        ("out_max_pasid_log2", _u8),
        ("__reserved", _u8 * 3),
        ("out_capabilities", _u64),
    ]


# enum iommufd_hwpt_set_dirty_tracking_flags
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1


class iommu_hwpt_set_dirty_tracking(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("hwpt_id", _u32),
        ("__reserved", _u32),
    ]


# enum iommufd_hwpt_get_dirty_bitmap_flags
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1


class iommu_hwpt_get_dirty_bitmap(Struct):
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("flags", _u32),
        ("__reserved", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("page_size", _u64),
        ("data", _u64),
    ]


# enum iommu_hwpt_invalidate_data_type
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1

# enum iommu_hwpt_vtd_s1_invalidate_flags
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0


class iommu_hwpt_vtd_s1_invalidate(Struct):
    _fields_ = [
        ("addr", _u64),
        ("npages", _u64),
        ("flags", _u32),
        ("__reserved", _u32),
    ]


class iommu_viommu_arm_smmuv3_invalidate(Struct):
    _fields_ = [("cmd", _u64 * 2)]  # __aligned_le64


class iommu_hwpt_invalidate(Struct):
    _fields_ = [
        ("size", _u32),
        ("hwpt_id", _u32),
        ("data_uptr", _u64),
        ("data_type", _u32),
        ("entry_len", _u32),
        ("entry_num", _u32),
        ("__reserved", _u32),
    ]


# enum iommu_hwpt_pgfault_flags
IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1

# enum iommu_hwpt_pgfault_perm
IOMMU_PGFAULT_PERM_READ = 1 << 0
IOMMU_PGFAULT_PERM_WRITE = 1 << 1
IOMMU_PGFAULT_PERM_EXEC = 1 << 2
IOMMU_PGFAULT_PERM_PRIV = 1 << 3


class iommu_hwpt_pgfault(Struct):
    _fields_ = [
        ("flags", _u32),
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("__reserved", _u32),
        ("addr", _u64),
        ("length", _u32),
        ("cookie", _u32),
    ]


# enum iommufd_page_response_code
IOMMUFD_PAGE_RESP_SUCCESS = 0
IOMMUFD_PAGE_RESP_INVALID = 1


class iommu_hwpt_page_response(Struct):
    _fields_ = [("cookie", _u32), ("code", _u32)]


class iommu_fault_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("out_fault_id", _u32),
        ("out_fault_fd", _u32),
    ]


# enum iommu_viommu_type
IOMMU_VIOMMU_TYPE_DEFAULT = 0
IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1
IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2


class iommu_viommu_tegra241_cmdqv(Struct):
    _fields_ = [("out_vintf_mmap_offset", _u64), ("out_vintf_mmap_length", _u64)]


class iommu_viommu_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("type", _u32),
        ("dev_id", _u32),
        ("hwpt_id", _u32),
        ("out_viommu_id", _u32),
        ("data_len", _u32),
        ("__reserved", _u32),
        ("data_uptr", _u64),
    ]


class iommu_vdevice_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("viommu_id", _u32),
        ("dev_id", _u32),
        ("out_vdevice_id", _u32),
        ("virt_id", _u64),
    ]


class iommu_ioas_change_process(Struct):
    _fields_ = [("size", _u32), ("__reserved", _u32)]


# enum iommu_veventq_flag
IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1 << 0


class iommufd_vevent_header(Struct):
    _fields_ = [("flags", _u32), ("sequence", _u32)]


# enum iommu_veventq_type
IOMMU_VEVENTQ_TYPE_DEFAULT = 0
IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1
IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2


class iommu_vevent_arm_smmuv3(Struct):
    _fields_ = [("evt", _u64 * 4)]  # __aligned_le64


class iommu_vevent_tegra241_cmdqv(Struct):
    _fields_ = [("lvcmdq_err_map", _u64 * 2)]  # __aligned_le64


class iommu_veventq_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("veventq_depth", _u32),
        ("out_veventq_id", _u32),
        ("out_veventq_fd", _u32),
        ("__reserved", _u32),
    ]


# enum iommu_hw_queue_type
IOMMU_HW_QUEUE_TYPE_DEFAULT = 0
IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1


class iommu_hw_queue_alloc(Struct):
    _fields_ = [
        ("size", _u32),
        ("flags", _u32),
        ("viommu_id", _u32),
        ("type", _u32),
        ("index", _u32),
        ("out_hw_queue_id", _u32),
        ("nesting_parent_iova", _u64),
        ("length", _u64),
    ]


IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)
IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)
IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)
IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)
IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
IOMMU_VIOMMU_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)
IOMMU_VDEVICE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)
IOMMU_IOAS_CHANGE_PROCESS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)
IOMMU_VEVENTQ_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)
IOMMU_HW_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)
IOMMU_IOAS_NOIOMMU_GET_PA = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA)

# drivers/iommu/iommufd/iommufd_test.h (CONFIG_IOMMUFD_TEST), under the names the selftest sees.
from .iommufd_test import *  # noqa: E402, F403
