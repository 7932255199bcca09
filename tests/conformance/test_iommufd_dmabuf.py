"""The selftest's dma-buf cases of the ``iommufd_ioas`` fixture (dmabuf_simple, dmabuf_revoke;
tools/testing/selftests/iommu/iommufd.c) and KERNEL.md §3's IOAS_MAP_FILE-of-a-dma-buf
facts: length 0 or past the buffer EINVAL, a revoked buffer ENODEV (checked before the IOVA
overlap), and un-revoke does not remap. The buffers come from the mock's
IOMMU_TEST_OP_DMABUF_GET, whose return value changed in 7.3: the new fd before, 0 since
(dba4254e216d; the fd is installed all the same, at the lowest free number — the selftest's
own _test_cmd_get_dmabuf, which still takes the return value, gets 0). Needs
CONFIG_IOMMUFD_TEST on a kernel whose mock has that op (6.19+); the linux variant skips
otherwise, saying which."""

from __future__ import annotations

import errno
import os

import pytest

from passthru.uapi import linux as L

from ._iommufd import NODE, U64_MAX, Iommufd, is_linux, mock_fixture_setup, raises
from ._probe import PAGE
from ._vfio import kernel_version

pytestmark = pytest.mark.node(NODE)

SIZE = 4 * PAGE


@pytest.fixture(params=[pytest.param("sim", id="sim"),
                        pytest.param("linux", id="linux", marks=pytest.mark.linux)])
def host(request):
    """tests/conftest.py's ``host``, except that the sim variant runs the linux-7.1 profile:
    iommufd imports dma-bufs (and the mock exports them) since 6.19, so the default
    linux-6.18 model rightly has no IOMMU_TEST_OP_DMABUF_GET. The linux variant is unchanged
    (it skips below when the running kernel's mock lacks the op)."""
    if request.param == "sim":
        from passthru import SimHost

        yield SimHost(profile="linux-7.1")
        return
    if not os.path.exists(NODE):
        pytest.skip(f"{NODE} absent")
    if not os.access(NODE, os.R_OK | os.W_OK):
        pytest.skip(f"{NODE} not accessible")
    from passthru.host.linux import LinuxHost

    with LinuxHost() as h:
        yield h


def get_dmabuf(host, ctx: Iommufd, length: int) -> int:
    """IOMMU_TEST_OP_DMABUF_GET's new dma-buf fd, on every kernel. dma_buf_fd installs it at
    the lowest free number (get_unused_fd_flags), learnt beforehand with F_DUPFD; the ioctl
    returns that number before 7.3 and 0 since (iommufd_test_dmabuf_get, dba4254e216d). The
    fd must then be open with FD_CLOEXEC (``open_flags`` O_CLOEXEC): nothing else is ever
    closed as "the dma-buf"."""
    free = host.fcntl(ctx.fd, L.F_DUPFD_CLOEXEC, 0)
    host.close(free)
    ret = ctx.get_dmabuf(length)
    if kernel_version(host) >= (7, 3):
        assert ret == 0, f"7.3's DMABUF_GET returns 0, not {ret}"
    else:
        assert ret == free, f"DMABUF_GET returned {ret}, not the new fd {free}"
    assert host.fcntl(free, L.F_GETFD) == L.FD_CLOEXEC, f"fd {free} is not the new dma-buf"
    return free


class DmabufIoas:
    def __init__(self, host, mock_domains):
        self.host = host
        self.ctx = ctx = mock_fixture_setup(host)
        self.ioas_id = ctx.ioas_alloc()
        self.mock_domains = mock_domains
        self.device_id = 0
        for _ in range(mock_domains):
            _, _, self.device_id = ctx.mock_domain(self.ioas_id)
        try:
            self.dfd = get_dmabuf(host, ctx, SIZE)
        except OSError as e:
            if is_linux(host) and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                pytest.skip("the running kernel's iommufd test mock has no "
                            "IOMMU_TEST_OP_DMABUF_GET (iommufd imports dma-bufs since 6.19)")
            raise

    def map_file(self, start, length, iova=None):
        return self.ctx.ioas_map_file(self.ioas_id, self.dfd, start, length, iova)


@pytest.fixture(params=[0, 1], ids=["no_domain", "mock_domain"])
def b(request, host):
    st = DmabufIoas(host, request.param)
    yield st
    st.host.close(st.dfd)
    st.ctx.teardown()


def test_dmabuf_simple(b):
    raises(errno.EINVAL, b.map_file, 0, 0)
    raises(errno.EINVAL, b.map_file, SIZE, SIZE)
    raises(errno.EINVAL, b.map_file, 0, SIZE + 1)
    assert b.ctx.ioas_unmap(b.ioas_id, 0, U64_MAX) == 0  # the failures mapped nothing
    iova = b.map_file(0, SIZE)
    assert b.ctx.ioas_unmap(b.ioas_id, iova, SIZE) == SIZE


def test_dmabuf_revoke(b):
    ctx = b.ctx
    iova = b.map_file(0, SIZE)
    ctx.revoke_dmabuf(b.dfd, True)
    if b.mock_domains:  # a new domain while the area is revoked
        ctx.hwpt_alloc(b.device_id, b.ioas_id, 0)
    raises(errno.ENODEV, b.map_file, 0, SIZE)
    ctx.revoke_dmabuf(b.dfd, False)
    iova2 = b.map_file(0, SIZE)
    assert iova2 != iova
    # restore the IOVA back: userspace unmaps and maps again
    assert ctx.ioas_unmap(b.ioas_id, iova, SIZE) == SIZE
    assert b.map_file(0, SIZE, iova) == iova


def test_dmabuf_revoked_enodev_before_eexist(b):
    """KERNEL.md §3: revocation is checked before the IOVA overlap."""
    iova = b.map_file(0, SIZE)
    b.ctx.revoke_dmabuf(b.dfd, True)
    raises(errno.ENODEV, b.map_file, 0, SIZE, iova)
    b.ctx.revoke_dmabuf(b.dfd, False)
    raises(errno.EEXIST, b.map_file, 0, SIZE, iova)


def test_dmabuf_area_survives_revoke_cycle_as_area(b):
    """After revoke and un-revoke the old area still occupies its IOVA (no automatic
    remap, but no automatic unmap either): EEXIST on top of it, and UNMAP removes it."""
    iova = b.map_file(0, SIZE)
    b.ctx.revoke_dmabuf(b.dfd, True)
    b.ctx.revoke_dmabuf(b.dfd, False)
    raises(errno.EEXIST, b.map_file, 0, SIZE, iova)
    assert b.ctx.ioas_unmap(b.ioas_id, iova, SIZE) == SIZE


def test_dmabuf_get_and_revoke_errors(b):
    """selftest.c: DMABUF_GET rounds the length up to a page, 0 or above 512 pages EINVAL;
    DMABUF_REVOKE takes the fd with dma_buf_get: a file that is no dma-buf EINVAL, a closed
    fd EBADF."""
    ctx = b.ctx
    raises(errno.EINVAL, ctx.get_dmabuf, 0)
    raises(errno.EINVAL, ctx.get_dmabuf, 513 * PAGE)
    fd = get_dmabuf(b.host, ctx, PAGE + 1)  # two pages
    try:
        raises(errno.EINVAL, ctx.ioas_map_file, b.ioas_id, fd, 0, 2 * PAGE + 1)
        iova = ctx.ioas_map_file(b.ioas_id, fd, 0, 2 * PAGE)
        assert ctx.ioas_unmap(b.ioas_id, iova, 2 * PAGE) == 2 * PAGE
    finally:
        b.host.close(fd)
    raises(errno.EBADF, ctx.revoke_dmabuf, fd, True)
    raises(errno.EINVAL, ctx.revoke_dmabuf, ctx.fd, True)
