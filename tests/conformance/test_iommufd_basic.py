"""/dev/iommu, the selftest's ``iommufd`` fixture (tools/testing/selftests/iommu/iommufd.c):
the ioctl dispatcher's size rules (EINVAL below the minimum, E2BIG for non-zero trailing
bytes, ENOTTY for unknown numbers), IOMMU_DESTROY, IOMMU_OPTION and the VFIO type1
compatibility ioctls on an iommufd with no IOAS attached (KERNEL.md §3). None needs the
CONFIG_IOMMUFD_TEST mock."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru.uapi import ioctl as IOC
from passthru.uapi import iommufd as I
from passthru.uapi import vfio as V

from ._iommufd import NODE, Iommufd, raises

pytestmark = pytest.mark.node(NODE)


@pytest.fixture
def ctx(host):
    return Iommufd(host)


def test_simple_close(ctx):
    ctx.close()


def test_cmd_fail(host, ctx):
    raises(errno.ENOENT, ctx.destroy, 0)  # object id is invalid
    raises(errno.EFAULT, host.ioctl, ctx.fd, I.IOMMU_DESTROY, None)  # bad pointer
    cmd = I.iommu_destroy(size=ctypes.sizeof(I.iommu_destroy), id=0)
    raises(errno.ENOTTY, host.ioctl, ctx.fd, IOC._IO(I.IOMMUFD_TYPE, I.IOMMUFD_CMD_BASE - 1), cmd)


# (struct, ioctl, the last field every caller must pass: main.c's IOCTL_OP min_size)
LENGTHS = [
    (I.iommu_destroy, I.IOMMU_DESTROY, "id"),
    (I.iommu_fault_alloc, I.IOMMU_FAULT_QUEUE_ALLOC, "out_fault_fd"),
    (I.iommu_hw_info, I.IOMMU_GET_HW_INFO, "__reserved"),
    (I.iommu_hw_queue_alloc, I.IOMMU_HW_QUEUE_ALLOC, "length"),
    (I.iommu_hwpt_alloc, I.IOMMU_HWPT_ALLOC, "__reserved"),
    (I.iommu_hwpt_get_dirty_bitmap, I.IOMMU_HWPT_GET_DIRTY_BITMAP, "data"),
    (I.iommu_hwpt_invalidate, I.IOMMU_HWPT_INVALIDATE, "__reserved"),
    (I.iommu_hwpt_set_dirty_tracking, I.IOMMU_HWPT_SET_DIRTY_TRACKING, "__reserved"),
    (I.iommu_ioas_alloc, I.IOMMU_IOAS_ALLOC, "out_ioas_id"),
    (I.iommu_ioas_allow_iovas, I.IOMMU_IOAS_ALLOW_IOVAS, "allowed_iovas"),
    (I.iommu_ioas_change_process, I.IOMMU_IOAS_CHANGE_PROCESS, "__reserved"),
    (I.iommu_ioas_copy, I.IOMMU_IOAS_COPY, "src_iova"),
    (I.iommu_ioas_iova_ranges, I.IOMMU_IOAS_IOVA_RANGES, "out_iova_alignment"),
    (I.iommu_ioas_map, I.IOMMU_IOAS_MAP, "iova"),
    (I.iommu_ioas_map_file, I.IOMMU_IOAS_MAP_FILE, "iova"),
    (I.iommu_ioas_unmap, I.IOMMU_IOAS_UNMAP, "length"),
    (I.iommu_option, I.IOMMU_OPTION, "val64"),
    (I.iommu_vdevice_alloc, I.IOMMU_VDEVICE_ALLOC, "virt_id"),
    (I.iommu_veventq_alloc, I.IOMMU_VEVENTQ_ALLOC, "out_veventq_fd"),
    (I.iommu_vfio_ioas, I.IOMMU_VFIO_IOAS, "__reserved"),
    (I.iommu_viommu_alloc, I.IOMMU_VIOMMU_ALLOC, "out_viommu_id"),
]


def _offsetofend(struct, name: str) -> int:
    f = getattr(struct, name)
    return f.offset + f.size


@pytest.mark.parametrize(("struct", "request_", "last"), LENGTHS,
                         ids=[s.__name__ for s, _, _ in LENGTHS])
def test_cmd_length(host, ctx, struct, request_, last):
    """The selftest's TEST_LENGTH: {struct; u8 extra} with extra = 0xff."""

    class Padded(ctypes.Structure):
        _fields_ = [("cmd", struct), ("extra", ctypes.c_uint8)]

    assert Padded.extra.offset == ctypes.sizeof(struct)
    buf = Padded()
    buf.extra = 0xFF
    buf.cmd.size = _offsetofend(struct, last) - 1
    raises(errno.EINVAL, host.ioctl, ctx.fd, request_, buf)
    buf.cmd.size = ctypes.sizeof(struct) + 1
    raises(errno.E2BIG, host.ioctl, ctx.fd, request_, buf)
    buf.cmd.size = ctypes.sizeof(struct)
    try:
        host.ioctl(ctx.fd, request_, buf)
        first = 0
    except OSError as e:
        first = e.errno
    buf.cmd.size = ctypes.sizeof(struct) + 1
    buf.extra = 0
    if first:  # a zero trailing byte is accepted: the same answer as the exact size
        raises(first, host.ioctl, ctx.fd, request_, buf)
    else:
        host.ioctl(ctx.fd, request_, buf)


def test_cmd_ex_fail(host, ctx):
    class Longer(ctypes.Structure):
        _fields_ = [("cmd", I.iommu_destroy), ("future", ctypes.c_uint64)]

    cmd = Longer()
    cmd.cmd.size = ctypes.sizeof(Longer)
    raises(errno.ENOENT, host.ioctl, ctx.fd, I.IOMMU_DESTROY, cmd)  # longer, bad id
    cmd.future = 1
    raises(errno.E2BIG, host.ioctl, ctx.fd, I.IOMMU_DESTROY, cmd)  # future area non-zero
    cmd.cmd.size = ctypes.sizeof(I.iommu_destroy)
    raises(errno.ENOENT, host.ioctl, ctx.fd, I.IOMMU_DESTROY, cmd)  # original "works"
    cmd.cmd.size = ctypes.sizeof(I.iommu_destroy) - 1
    raises(errno.EINVAL, host.ioctl, ctx.fd, I.IOMMU_DESTROY, cmd)  # short


def test_global_options(ctx):
    R = I.IOMMU_OPTION_RLIMIT_MODE
    assert ctx.option(R, I.IOMMU_OPTION_OP_GET, val64=1) == 0
    ctx.option(R, I.IOMMU_OPTION_OP_SET, val64=1)  # requires CAP_SYS_RESOURCE (root)
    raises(errno.EINVAL, ctx.option, R, I.IOMMU_OPTION_OP_SET, val64=2)
    assert ctx.option(R, I.IOMMU_OPTION_OP_GET) == 1  # the failed SET changed nothing
    ctx.option(R, I.IOMMU_OPTION_OP_SET, val64=0)
    assert ctx.option(R, I.IOMMU_OPTION_OP_GET, val64=7) == 0
    # HUGE_PAGES is per IOAS: object id 0 is no object
    raises(errno.ENOENT, ctx.option, I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_GET)
    raises(errno.ENOENT, ctx.option, I.IOMMU_OPTION_HUGE_PAGES, I.IOMMU_OPTION_OP_SET)


def test_option_unknown_id_and_reserved(host, ctx):
    # iommufd_option: non-zero __reserved, or an unknown option_id: EOPNOTSUPP (uapi rules)
    raises(errno.EOPNOTSUPP, ctx.option, 0x7F, I.IOMMU_OPTION_OP_GET)
    cmd = I.iommu_option(size=ctypes.sizeof(I.iommu_option), option_id=I.IOMMU_OPTION_RLIMIT_MODE,
                         op=I.IOMMU_OPTION_OP_GET, __reserved=1)
    raises(errno.EOPNOTSUPP, host.ioctl, ctx.fd, I.IOMMU_OPTION, cmd)


def test_ioas_alloc_rules(host, ctx):
    # KERNEL.md §9: bad flags EOPNOTSUPP, short size EINVAL (observed on 7.3)
    cmd = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc), flags=1)
    raises(errno.EOPNOTSUPP, host.ioctl, ctx.fd, I.IOMMU_IOAS_ALLOC, cmd)
    assert cmd.out_ioas_id == 0
    cmd = I.iommu_ioas_alloc(size=4)
    raises(errno.EINVAL, host.ioctl, ctx.fd, I.IOMMU_IOAS_ALLOC, cmd)
    a, b = ctx.ioas_alloc(), ctx.ioas_alloc()
    assert a != b
    ctx.destroy(a)
    raises(errno.ENOENT, ctx.destroy, a)  # gone, and only it
    ctx.destroy(b)


# -- VFIO compatibility ioctls (drivers/iommu/iommufd/vfio_compat.c) --------------------------


def test_simple_ioctls(host, ctx):
    assert host.ioctl(ctx.fd, V.VFIO_GET_API_VERSION) == V.VFIO_API_VERSION
    assert host.ioctl(ctx.fd, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1v2_IOMMU) == 1


def test_unmap_cmd(host, ctx):
    cmd = V.vfio_iommu_type1_dma_unmap(iova=I.MOCK_APERTURE_START, size=4096, argsz=1)
    raises(errno.EINVAL, host.ioctl, ctx.fd, V.VFIO_IOMMU_UNMAP_DMA, cmd)
    cmd.argsz = ctypes.sizeof(cmd)
    cmd.flags = 1 << 31
    raises(errno.EINVAL, host.ioctl, ctx.fd, V.VFIO_IOMMU_UNMAP_DMA, cmd)
    cmd.flags = 0
    raises(errno.ENODEV, host.ioctl, ctx.fd, V.VFIO_IOMMU_UNMAP_DMA, cmd)


def test_map_cmd(host, ctx):
    cmd = V.vfio_iommu_type1_dma_map(iova=I.MOCK_APERTURE_START, size=4096, vaddr=ctx.buffer,
                                     argsz=1)
    raises(errno.EINVAL, host.ioctl, ctx.fd, V.VFIO_IOMMU_MAP_DMA, cmd)
    cmd.argsz = ctypes.sizeof(cmd)
    cmd.flags = 1 << 31
    raises(errno.EINVAL, host.ioctl, ctx.fd, V.VFIO_IOMMU_MAP_DMA, cmd)
    cmd.flags = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE
    raises(errno.ENODEV, host.ioctl, ctx.fd, V.VFIO_IOMMU_MAP_DMA, cmd)  # needs an IOAS


def test_info_cmd(host, ctx):
    cmd = V.vfio_iommu_type1_info(argsz=1)
    raises(errno.EINVAL, host.ioctl, ctx.fd, V.VFIO_IOMMU_GET_INFO, cmd)
    cmd.argsz = ctypes.sizeof(cmd)
    raises(errno.ENODEV, host.ioctl, ctx.fd, V.VFIO_IOMMU_GET_INFO, cmd)


def test_set_iommu_cmd(host, ctx):
    raises(errno.ENODEV, host.ioctl, ctx.fd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU)
    raises(errno.ENODEV, host.ioctl, ctx.fd, V.VFIO_SET_IOMMU, V.VFIO_TYPE1_IOMMU)


def test_vfio_ioas(host, ctx):
    cmd = I.iommu_vfio_ioas(size=ctypes.sizeof(I.iommu_vfio_ioas), op=I.IOMMU_VFIO_IOAS_GET)
    raises(errno.ENODEV, host.ioctl, ctx.fd, I.IOMMU_VFIO_IOAS, cmd)  # no compat IOAS
    cmd.op = I.IOMMU_VFIO_IOAS_SET
    raises(errno.ENOENT, host.ioctl, ctx.fd, I.IOMMU_VFIO_IOAS, cmd)  # invalid id
    ioas = ctx.ioas_alloc()
    cmd.ioas_id = ioas
    host.ioctl(ctx.fd, I.IOMMU_VFIO_IOAS, cmd)
    cmd.op, cmd.ioas_id = I.IOMMU_VFIO_IOAS_GET, 0
    host.ioctl(ctx.fd, I.IOMMU_VFIO_IOAS, cmd)
    assert cmd.ioas_id == ioas
    cmd.op = I.IOMMU_VFIO_IOAS_CLEAR
    host.ioctl(ctx.fd, I.IOMMU_VFIO_IOAS, cmd)
    cmd.op = I.IOMMU_VFIO_IOAS_GET
    raises(errno.ENODEV, host.ioctl, ctx.fd, I.IOMMU_VFIO_IOAS, cmd)
