"""ctypes mirror of drivers/iommu/iommufd/iommufd_test.h, as of Linux 7.3.

The CONFIG_IOMMUFD_TEST interface: the one extra iommufd command a kernel built with
CONFIG_IOMMUFD_TEST accepts on /dev/iommu, ``IOMMU_TEST_CMD`` (``_IO(IOMMUFD_TYPE,
IOMMUFD_CMD_BASE + 32)``, argument ``struct iommu_test_cmd`` whose ``op`` is an
``IOMMU_TEST_OP_*``), and the numbers of the mock IOMMU driver behind it (``MOCK_*``, and the
``*_SELFTEST`` types and data structs that the regular iommufd commands accept for it). The
header is not installed as uAPI: tools/testing/selftests/iommu includes it from the source
tree, and so is it mirrored here, with the names the selftest sees. Like every iommufd
argument, ``struct iommu_test_cmd`` starts with its ``size``; the kernel requires it to reach
at least the end of ``last``.

``passthru.uapi.iommufd`` re-exports every name of this module (``__all__``), so
``iommufd.IOMMU_TEST_OP_MOCK_DOMAIN`` works. The mock aperture and page sizes are those of
the default mock page table (``MOCK_IOMMUPT_DEFAULT``), as the header says.

Not mirrored: nothing of the 7.3 header is left out except its comments.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, Struct, Union

__all__ = [
    # anonymous enum: the ops of IOMMU_TEST_CMD
    "IOMMU_TEST_OP_ADD_RESERVED",
    "IOMMU_TEST_OP_MOCK_DOMAIN",
    "IOMMU_TEST_OP_MD_CHECK_MAP",
    "IOMMU_TEST_OP_MD_CHECK_REFS",
    "IOMMU_TEST_OP_CREATE_ACCESS",
    "IOMMU_TEST_OP_DESTROY_ACCESS_PAGES",
    "IOMMU_TEST_OP_ACCESS_PAGES",
    "IOMMU_TEST_OP_ACCESS_RW",
    "IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT",
    "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE",
    "IOMMU_TEST_OP_ACCESS_REPLACE_IOAS",
    "IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS",
    "IOMMU_TEST_OP_DIRTY",
    "IOMMU_TEST_OP_MD_CHECK_IOTLB",
    "IOMMU_TEST_OP_TRIGGER_IOPF",
    "IOMMU_TEST_OP_DEV_CHECK_CACHE",
    "IOMMU_TEST_OP_TRIGGER_VEVENT",
    "IOMMU_TEST_OP_PASID_ATTACH",
    "IOMMU_TEST_OP_PASID_REPLACE",
    "IOMMU_TEST_OP_PASID_DETACH",
    "IOMMU_TEST_OP_PASID_CHECK_HWPT",
    "IOMMU_TEST_OP_DMABUF_GET",
    "IOMMU_TEST_OP_DMABUF_REVOKE",
    # mock page table types, aperture and page sizes
    "MOCK_IOMMUPT_DEFAULT",
    "MOCK_IOMMUPT_HUGE",
    "MOCK_APERTURE_START",
    "MOCK_APERTURE_LAST",
    "MOCK_PAGE_SIZE",
    "MOCK_HUGE_PAGE_SIZE",
    # flags
    "MOCK_FLAGS_ACCESS_WRITE",
    "MOCK_FLAGS_ACCESS_SYZ",
    "MOCK_ACCESS_RW_WRITE",
    "MOCK_ACCESS_RW_SLOW_PATH",
    "MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES",
    "MOCK_FLAGS_DEVICE_NO_DIRTY",
    "MOCK_FLAGS_DEVICE_PASID",
    # mock caches
    "MOCK_NESTED_DOMAIN_IOTLB_ID_MAX",
    "MOCK_NESTED_DOMAIN_IOTLB_NUM",
    "MOCK_DEV_CACHE_ID_MAX",
    "MOCK_DEV_CACHE_NUM",
    "IOMMU_TEST_PASID_RESERVED",
    # the command
    "iommu_test_cmd",
    "IOMMU_TEST_CMD",
    "MOCK_PASID_WIDTH",
    # IOMMU_GET_HW_INFO
    "IOMMU_HW_INFO_TYPE_SELFTEST",
    "IOMMU_HW_INFO_SELFTEST_REGVAL",
    "iommu_test_hw_info",
    # IOMMU_HWPT_ALLOC, IOMMU_HWPT_INVALIDATE
    "IOMMU_HWPT_DATA_SELFTEST",
    "IOMMU_TEST_IOTLB_DEFAULT",
    "IOMMU_TEST_DEV_CACHE_DEFAULT",
    "iommu_hwpt_selftest",
    "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST",
    "IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID",
    "IOMMU_TEST_INVALIDATE_FLAG_ALL",
    "iommu_hwpt_invalidate_selftest",
    # IOMMU_VIOMMU_ALLOC, vIOMMU invalidation, IOMMU_VEVENTQ_ALLOC, IOMMU_HW_QUEUE_ALLOC
    "IOMMU_VIOMMU_TYPE_SELFTEST",
    "iommu_viommu_selftest",
    "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST",
    "IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID",
    "iommu_viommu_invalidate_selftest",
    "IOMMU_VEVENTQ_TYPE_SELFTEST",
    "iommu_viommu_event_selftest",
    "IOMMU_HW_QUEUE_TYPE_SELFTEST",
    "IOMMU_TEST_HW_QUEUE_MAX",
]

_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64

# linux/iommufd.h's IOMMUFD_TYPE and IOMMUFD_CMD_BASE, written out: passthru.uapi.iommufd
# re-exports this module, so importing it from here would be circular (a test checks they agree).
_IOMMUFD_TYPE = ord(";")
_IOMMUFD_CMD_BASE = 0x80

# anonymous enum: the ops of IOMMU_TEST_CMD (iommu_test_cmd.op)
IOMMU_TEST_OP_ADD_RESERVED = 1
IOMMU_TEST_OP_MOCK_DOMAIN = 2
IOMMU_TEST_OP_MD_CHECK_MAP = 3
IOMMU_TEST_OP_MD_CHECK_REFS = 4
IOMMU_TEST_OP_CREATE_ACCESS = 5
IOMMU_TEST_OP_DESTROY_ACCESS_PAGES = 6
IOMMU_TEST_OP_ACCESS_PAGES = 7
IOMMU_TEST_OP_ACCESS_RW = 8
IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT = 9
IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE = 10
IOMMU_TEST_OP_ACCESS_REPLACE_IOAS = 11
IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS = 12
IOMMU_TEST_OP_DIRTY = 13
IOMMU_TEST_OP_MD_CHECK_IOTLB = 14
IOMMU_TEST_OP_TRIGGER_IOPF = 15
IOMMU_TEST_OP_DEV_CHECK_CACHE = 16
IOMMU_TEST_OP_TRIGGER_VEVENT = 17
IOMMU_TEST_OP_PASID_ATTACH = 18
IOMMU_TEST_OP_PASID_REPLACE = 19
IOMMU_TEST_OP_PASID_DETACH = 20
IOMMU_TEST_OP_PASID_CHECK_HWPT = 21
IOMMU_TEST_OP_DMABUF_GET = 22
IOMMU_TEST_OP_DMABUF_REVOKE = 23

# anonymous enum: mock page table types (iommu_hwpt_selftest.pagetable_type)
MOCK_IOMMUPT_DEFAULT = 0
MOCK_IOMMUPT_HUGE = 1

# anonymous enum: true for MOCK_IOMMUPT_DEFAULT
MOCK_APERTURE_START = 1 << 24
MOCK_APERTURE_LAST = (1 << 31) - 1
MOCK_PAGE_SIZE = 2048
MOCK_HUGE_PAGE_SIZE = 512 * MOCK_PAGE_SIZE

# anonymous enum: iommu_test_cmd.create_access.flags
MOCK_FLAGS_ACCESS_WRITE = 1 << 0
MOCK_FLAGS_ACCESS_SYZ = 1 << 16

# anonymous enum: iommu_test_cmd.access_rw.flags
MOCK_ACCESS_RW_WRITE = 1 << 0
MOCK_ACCESS_RW_SLOW_PATH = 1 << 2

# anonymous enum: iommu_test_cmd.create_access.flags
MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES = 1 << 0

# anonymous enum: iommu_test_cmd.mock_domain_flags.dev_flags
MOCK_FLAGS_DEVICE_NO_DIRTY = 1 << 0
MOCK_FLAGS_DEVICE_PASID = 1 << 2

# anonymous enum
MOCK_NESTED_DOMAIN_IOTLB_ID_MAX = 3
MOCK_NESTED_DOMAIN_IOTLB_NUM = 4

# anonymous enum
MOCK_DEV_CACHE_ID_MAX = 3
MOCK_DEV_CACHE_NUM = 4

# Reserved for the special PASID replace test
IOMMU_TEST_PASID_RESERVED = 1024


# The untagged structs of iommu_test_cmd's anonymous union, one per op (or group of ops).
class _iommu_test_cmd_add_reserved(Struct):
    _fields_ = [("start", _u64), ("length", _u64)]


class _iommu_test_cmd_mock_domain(Struct):
    _fields_ = [("out_stdev_id", _u32), ("out_hwpt_id", _u32), ("out_idev_id", _u32)]


class _iommu_test_cmd_mock_domain_flags(Struct):
    _fields_ = [
        ("out_stdev_id", _u32),
        ("out_hwpt_id", _u32),
        ("out_idev_id", _u32),
        ("dev_flags", _u32),
    ]


class _iommu_test_cmd_mock_domain_replace(Struct):
    _fields_ = [("pt_id", _u32)]


class _iommu_test_cmd_check_map(Struct):
    _fields_ = [("iova", _u64), ("length", _u64), ("uptr", _u64)]


class _iommu_test_cmd_check_refs(Struct):
    _fields_ = [("length", _u64), ("uptr", _u64), ("refs", _u32)]


class _iommu_test_cmd_create_access(Struct):
    _fields_ = [("out_access_fd", _u32), ("flags", _u32)]


class _iommu_test_cmd_destroy_access_pages(Struct):
    _fields_ = [("access_pages_id", _u32)]


class _iommu_test_cmd_access_pages(Struct):
    _fields_ = [
        ("flags", _u32),
        ("out_access_pages_id", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("uptr", _u64),
    ]


class _iommu_test_cmd_access_rw(Struct):
    _fields_ = [("iova", _u64), ("length", _u64), ("uptr", _u64), ("flags", _u32)]


class _iommu_test_cmd_memory_limit(Struct):
    _fields_ = [("limit", _u32)]


class _iommu_test_cmd_access_replace_ioas(Struct):
    _fields_ = [("ioas_id", _u32)]


class _iommu_test_cmd_dirty(Struct):
    _fields_ = [
        ("flags", _u32),
        ("iova", _u64),
        ("length", _u64),
        ("page_size", _u64),
        ("uptr", _u64),
        ("out_nr_dirty", _u64),
    ]


class _iommu_test_cmd_check_iotlb(Struct):
    _fields_ = [("id", _u32), ("iotlb", _u32)]


class _iommu_test_cmd_trigger_iopf(Struct):
    _fields_ = [
        ("dev_id", _u32),
        ("pasid", _u32),
        ("grpid", _u32),
        ("perm", _u32),
        ("addr", _u64),
    ]


class _iommu_test_cmd_check_dev_cache(Struct):
    _fields_ = [("id", _u32), ("cache", _u32)]


class _iommu_test_cmd_trigger_vevent(Struct):
    _fields_ = [("dev_id", _u32)]


class _iommu_test_cmd_pasid_attach(Struct):  # iommu_test_cmd.id is the stdev_id
    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class _iommu_test_cmd_pasid_replace(Struct):  # iommu_test_cmd.id is the stdev_id
    _fields_ = [("pasid", _u32), ("pt_id", _u32)]


class _iommu_test_cmd_pasid_detach(Struct):  # iommu_test_cmd.id is the stdev_id
    _fields_ = [("pasid", _u32)]


class _iommu_test_cmd_pasid_check(Struct):  # iommu_test_cmd.id is the stdev_id
    _fields_ = [("pasid", _u32), ("hwpt_id", _u32)]


class _iommu_test_cmd_dmabuf_get(Struct):
    _fields_ = [("length", _u32), ("open_flags", _u32)]


class _iommu_test_cmd_dmabuf_revoke(Struct):
    _fields_ = [("dmabuf_fd", _s32), ("revoked", _u32)]


class _iommu_test_cmd_u(Union):
    _fields_ = [
        ("add_reserved", _iommu_test_cmd_add_reserved),
        ("mock_domain", _iommu_test_cmd_mock_domain),
        ("mock_domain_flags", _iommu_test_cmd_mock_domain_flags),
        ("mock_domain_replace", _iommu_test_cmd_mock_domain_replace),
        ("check_map", _iommu_test_cmd_check_map),
        ("check_refs", _iommu_test_cmd_check_refs),
        ("create_access", _iommu_test_cmd_create_access),
        ("destroy_access_pages", _iommu_test_cmd_destroy_access_pages),
        ("access_pages", _iommu_test_cmd_access_pages),
        ("access_rw", _iommu_test_cmd_access_rw),
        ("memory_limit", _iommu_test_cmd_memory_limit),
        ("access_replace_ioas", _iommu_test_cmd_access_replace_ioas),
        ("dirty", _iommu_test_cmd_dirty),
        ("check_iotlb", _iommu_test_cmd_check_iotlb),
        ("trigger_iopf", _iommu_test_cmd_trigger_iopf),
        ("check_dev_cache", _iommu_test_cmd_check_dev_cache),
        ("trigger_vevent", _iommu_test_cmd_trigger_vevent),
        ("pasid_attach", _iommu_test_cmd_pasid_attach),
        ("pasid_replace", _iommu_test_cmd_pasid_replace),
        ("pasid_detach", _iommu_test_cmd_pasid_detach),
        ("pasid_check", _iommu_test_cmd_pasid_check),
        ("dmabuf_get", _iommu_test_cmd_dmabuf_get),
        ("dmabuf_revoke", _iommu_test_cmd_dmabuf_revoke),
    ]


class iommu_test_cmd(Struct):
    """The argument of IOMMU_TEST_CMD: ``cmd.mock_domain.out_hwpt_id`` etc. (the union is
    anonymous in C, so its members are attributes of the struct)."""

    _anonymous_ = ("u",)
    _fields_ = [
        ("size", _u32),
        ("op", _u32),
        ("id", _u32),
        ("__reserved", _u32),
        ("u", _iommu_test_cmd_u),
        ("last", _u32),
    ]


IOMMU_TEST_CMD = _IO(_IOMMUFD_TYPE, _IOMMUFD_CMD_BASE + 32)

# Mock device/IOMMU PASID width
MOCK_PASID_WIDTH = 20

# Mock data for IOMMU_GET_HW_INFO
IOMMU_HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF
IOMMU_HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF


class iommu_test_hw_info(Struct):
    _fields_ = [("flags", _u32), ("test_reg", _u32)]


# Not equal to any value of enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_SELFTEST = 0xDEAD
IOMMU_TEST_IOTLB_DEFAULT = 0xBADBEEF
IOMMU_TEST_DEV_CACHE_DEFAULT = 0xBADDAD


class iommu_hwpt_selftest(Struct):
    """IOMMU_HWPT_DATA_SELFTEST: ``iotlb`` is the default mock IOTLB value
    (IOMMU_TEST_IOTLB_DEFAULT); ``pagetable_type`` a MOCK_IOMMUPT_*."""

    _fields_ = [("iotlb", _u32), ("pagetable_type", _u32)]


# Not equal to any value of enum iommu_hwpt_invalidate_data_type
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF

# iommu_hwpt_invalidate_selftest.flags, iommu_viommu_invalidate_selftest.flags: with it set,
# iotlb_id / cache_id is ignored
IOMMU_TEST_INVALIDATE_FLAG_ALL = 1 << 0


class iommu_hwpt_invalidate_selftest(Struct):
    """Invalidation data for the mock driver (IOMMU_HWPT_INVALIDATE_DATA_SELFTEST)."""

    _fields_ = [("flags", _u32), ("iotlb_id", _u32)]


IOMMU_VIOMMU_TYPE_SELFTEST = 0xDEADBEEF


class iommu_viommu_selftest(Struct):
    """vIOMMU data for the mock driver (IOMMU_VIOMMU_TYPE_SELFTEST): the kernel sets
    ``out_data = in_data`` (a loopback test); ``out_mmap_offset``/``out_mmap_length`` are
    the offset and length arguments for mmap."""

    _fields_ = [
        ("in_data", _u32),
        ("out_data", _u32),
        ("out_mmap_offset", _u64),
        ("out_mmap_length", _u64),
    ]


# Not equal to any value of enum iommu_viommu_invalidate_data_type
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST = 0xDEADBEEF
IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST_INVALID = 0xDADBEEF


class iommu_viommu_invalidate_selftest(Struct):
    """Invalidation data for the mock vIOMMU (IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST)."""

    _fields_ = [("flags", _u32), ("vdev_id", _u32), ("cache_id", _u32)]


IOMMU_VEVENTQ_TYPE_SELFTEST = 0xBEEFBEEF


class iommu_viommu_event_selftest(Struct):
    _fields_ = [("virt_id", _u32)]


IOMMU_HW_QUEUE_TYPE_SELFTEST = 0xDEADBEEF
IOMMU_TEST_HW_QUEUE_MAX = 2
