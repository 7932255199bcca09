"""/dev/udmabuf (drivers/dma-buf/udmabuf.c; KERNEL.md §1 "udmabuf", §9's QEMU-guest
paragraph): UDMABUF_CREATE and UDMABUF_CREATE_LIST's checks, the pins on the memfd's pages,
and the buffer's mmap. Only the Host protocol and passthru.uapi, so the linux variant runs
wherever /dev/udmabuf exists (it skips, naming the node, where it does not)."""

from __future__ import annotations

import errno

import pytest

from passthru.host.linux import LinuxHost
from passthru.uapi import dma_buf as D
from passthru.uapi import linux as L
from passthru.uapi import udmabuf as U

from ._probe import PAGE

NODE = "/dev/udmabuf"
RW = L.PROT_READ | L.PROT_WRITE
MiB = 1 << 20
EBADFD = errno.EBADFD  # 77: udmabuf's answer for a bad or non-memfd fd, not EBADF (9)

pytestmark = pytest.mark.node(NODE)


def raises(err: int, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == err, e.value
    return e.value


def memfd(host, pages: int = 16, seals: int = L.F_SEAL_SHRINK, size: int | None = None) -> int:
    fd = host.memfd_create("udmabuf-test", L.MFD_ALLOW_SEALING)
    host.ftruncate(fd, pages * PAGE if size is None else size)
    if seals:
        host.fcntl(fd, L.F_ADD_SEALS, seals)
    return fd


def create(host, dev: int, mfd: int, offset: int, size: int, flags: int = 0) -> int:
    return host.ioctl(dev, U.UDMABUF_CREATE,
                      U.udmabuf_create(memfd=mfd, flags=flags, offset=offset, size=size))


def create_list(host, dev: int, items, flags: int = 0) -> int:
    return host.ioctl(dev, U.UDMABUF_CREATE_LIST, U.create_list(items, flags))


@pytest.fixture
def dev(host):
    return host.open(NODE, L.O_RDWR | L.O_CLOEXEC)


@pytest.fixture
def mfd(host):
    return memfd(host)


# -- UDMABUF_CREATE: success and flags -----------------------------------------------------------


def test_create_returns_a_dma_buf_fd(host, dev, mfd):
    fd = create(host, dev, mfd, 0, 4 * PAGE)
    assert fd > 0 and fd not in (dev, mfd)
    assert host.fcntl(fd, L.F_GETFD) == 0  # no UDMABUF_FLAGS_CLOEXEC, no O_CLOEXEC


def test_create_cloexec_flag(host, dev, mfd):
    fd = create(host, dev, mfd, 0, PAGE, U.UDMABUF_FLAGS_CLOEXEC)
    assert host.fcntl(fd, L.F_GETFD) == L.FD_CLOEXEC


@pytest.mark.parametrize("flags", [0x2, 0x80, 1 << 31, 0xFFFFFFFE])
def test_create_unknown_flag_bits_ignored(host, dev, mfd, flags):
    fd = create(host, dev, mfd, 0, PAGE, flags)
    assert host.fcntl(fd, L.F_GETFD) == 0


def test_a_partial_last_page_is_refused(host, dev):
    """memfd_pin_folios (mm/gup.c) refuses ``end >= i_size`` in bytes: a range reaching into
    the partial last page of the file is EINVAL (seen on Debian's 7.3.4 in lane 2); the whole
    pages before it are fine."""
    m = memfd(host, size=3 * PAGE + 100)
    raises(errno.EINVAL, create, host, dev, m, 0, 4 * PAGE)
    assert create(host, dev, m, 0, 3 * PAGE) > 0


# -- seals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seals", [
    0, L.F_SEAL_GROW, L.F_SEAL_SHRINK | L.F_SEAL_WRITE, L.F_SEAL_SHRINK | L.F_SEAL_FUTURE_WRITE,
    L.F_SEAL_SEAL], ids=["none", "grow", "shrink+write", "shrink+future_write", "seal"])
def test_bad_seals_einval(host, dev, seals):
    raises(errno.EINVAL, create, host, dev, memfd(host, seals=seals), 0, PAGE)


@pytest.mark.parametrize("seals", [
    L.F_SEAL_SHRINK, L.F_SEAL_SHRINK | L.F_SEAL_GROW, L.F_SEAL_SHRINK | L.F_SEAL_SEAL],
    ids=["shrink", "shrink+grow", "shrink+seal"])
def test_good_seals(host, dev, seals):
    assert create(host, dev, memfd(host, seals=seals), 0, PAGE) > 0


def test_memfd_without_allow_sealing_einval(host, dev):
    m = host.memfd_create("plain", 0)  # born with F_SEAL_SEAL only
    host.ftruncate(m, PAGE)
    raises(errno.EINVAL, create, host, dev, m, 0, PAGE)


# -- the fd ------------------------------------------------------------------------------------


def test_not_a_memfd_ebadfd(host, dev):
    null = host.open("/dev/null", L.O_RDWR)
    raises(EBADFD, create, host, dev, null, 0, PAGE)
    raises(EBADFD, create, host, dev, dev, 0, PAGE)  # /dev/udmabuf itself


def test_udmabuf_as_memfd_ebadfd(host, dev, mfd):
    buf = create(host, dev, mfd, 0, PAGE)
    raises(EBADFD, create, host, dev, buf, 0, PAGE)


def test_bad_fd_number_ebadfd(host, dev):
    closed = host.open("/dev/null", L.O_RDONLY)
    host.close(closed)
    raises(EBADFD, create, host, dev, closed, 0, PAGE)
    raises(EBADFD, create, host, dev, 0xFFFFFFFF, 0, PAGE)


def test_alignment_is_checked_before_the_fd(host, dev):
    raises(errno.EINVAL, create, host, dev, 0xFFFFFFFF, 0, PAGE + 1)


# -- offset and size -----------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "size"), [
    (0, 1), (0, PAGE - 1), (0, PAGE + 1), (1, PAGE), (PAGE // 2, PAGE), (PAGE, 3 * PAGE + 8)])
def test_misaligned_einval(host, dev, mfd, offset, size):
    raises(errno.EINVAL, create, host, dev, mfd, offset, size)


def test_size_zero_einval(host, dev, mfd):
    # udmabuf_create: if (!pgcnt) goto err (ret = -EINVAL)
    raises(errno.EINVAL, create, host, dev, mfd, 0, 0)


@pytest.mark.parametrize(("offset", "size"), [
    (0, 17 * PAGE), (15 * PAGE, 2 * PAGE), (16 * PAGE, PAGE), (1 << 40, PAGE),
    ((1 << 63), PAGE), ((1 << 64) - PAGE, PAGE)],
    ids=["too-long", "crosses-eof", "at-eof", "far", "negative-loff", "u64-top"])
def test_range_past_the_memfd_einval(host, dev, mfd, offset, size):
    raises(errno.EINVAL, create, host, dev, mfd, offset, size)


def _size_limit_mb(host) -> int:
    """udmabuf's size_limit_mb: the running module's parameter, or the model's profile."""
    if isinstance(host, LinuxHost):
        with open("/sys/module/udmabuf/parameters/size_limit_mb") as f:
            return int(f.read())
    return host.kernel.profile.udmabuf_size_limit_mb


def test_size_limit(host, dev):
    # size_limit_mb (module parameter; 64 on older kernels, INT_MAX on 7.3.4): the page
    # count must not exceed it
    limit = _size_limit_mb(host)
    big = memfd(host, size=64 * MiB + PAGE)
    if limit > 64:  # no limit at this size: the whole file is one buffer
        host.close(create(host, dev, big, 0, 64 * MiB + PAGE))
        return
    assert limit == 64
    raises(errno.EINVAL, create, host, dev, big, 0, 64 * MiB + PAGE)
    fd = create(host, dev, big, 0, 64 * MiB)
    host.close(fd)
    raises(errno.EINVAL, create_list, host, dev, [(big, 0, 32 * MiB), (big, 0, 32 * MiB + PAGE)])


def test_unknown_ioctl_enotty(host, dev):
    raises(errno.ENOTTY, host.ioctl, dev, U.UDMABUF_CREATE + 1, 0)
    raises(errno.ENOTTY, host.ioctl, dev, D.DMA_BUF_IOCTL_SYNC, D.dma_buf_sync())


# -- UDMABUF_CREATE_LIST ---------------------------------------------------------------------


def test_list_concatenates_items(host, dev):
    m1, m2 = memfd(host, 4), memfd(host, 4)
    fd = create_list(host, dev, [(m1, 2 * PAGE, PAGE), (m2, 0, 2 * PAGE), (m1, 0, PAGE)])
    addr = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    for i, tag in enumerate([b"one", b"two", b"three", b"four"]):
        host.poke(addr + i * PAGE, tag)
    assert host.pread(m1, 3, 2 * PAGE) == b"one"
    assert host.pread(m2, 3, 0) == b"two"
    assert host.pread(m2, 5, PAGE) == b"three"
    assert host.pread(m1, 4, 0) == b"four"
    raises(errno.EINVAL, host.mmap, 0, 5 * PAGE, RW, L.MAP_SHARED, fd, 0)


def test_list_cloexec_flag(host, dev, mfd):
    fd = create_list(host, dev, [(mfd, 0, PAGE)], U.UDMABUF_FLAGS_CLOEXEC)
    assert host.fcntl(fd, L.F_GETFD) == L.FD_CLOEXEC


def test_list_empty_einval(host, dev):
    raises(errno.EINVAL, create_list, host, dev, [])


def test_list_count_above_list_limit_einval(host, dev):
    # list_limit (module parameter, default 1024) is checked before the items are read
    head = U.udmabuf_create_list(flags=0, count=1025)
    raises(errno.EINVAL, host.ioctl, dev, U.UDMABUF_CREATE_LIST, bytearray(bytes(head)))


def test_list_empty_item_among_others_einval(host, dev, mfd):
    # memfd_pin_folios(start, start - 1): start > end
    raises(errno.EINVAL, create_list, host, dev, [(mfd, 0, PAGE), (mfd, PAGE, 0)])


def test_list_checks_every_item(host, dev, mfd):
    raises(errno.EINVAL, create_list, host, dev, [(mfd, 0, PAGE), (mfd, 0, PAGE + 1)])
    raises(errno.EINVAL, create_list, host, dev, [(mfd, 0, PAGE), (mfd, 16 * PAGE, PAGE)])
    raises(errno.EINVAL, create_list, host, dev, [(mfd, 0, PAGE), (memfd(host, seals=0), 0, PAGE)])
    null = host.open("/dev/null", L.O_RDWR)
    raises(EBADFD, create_list, host, dev, [(mfd, 0, PAGE), (null, 0, PAGE)])


def test_failed_list_unpins_the_earlier_items(host, dev, mfd):
    null = host.open("/dev/null", L.O_RDWR)
    raises(EBADFD, create_list, host, dev, [(mfd, 0, 4 * PAGE), (null, 0, PAGE)])
    # nothing stayed pinned: F_SEAL_WRITE would be EBUSY otherwise
    assert host.fcntl(mfd, L.F_ADD_SEALS, L.F_SEAL_WRITE) == 0


# -- the buffer: same pages as the memfd, pinned ---------------------------------------------


def test_mmap_needs_map_shared(host, dev, mfd):
    fd = create(host, dev, mfd, 0, 2 * PAGE)
    raises(errno.EINVAL, host.mmap, 0, 2 * PAGE, RW, L.MAP_PRIVATE, fd, 0)
    raises(errno.EINVAL, host.mmap, 0, 2 * PAGE, L.PROT_READ, L.MAP_PRIVATE, fd, 0)


def test_write_through_udmabuf_visible_in_memfd(host, dev, mfd):
    fd = create(host, dev, mfd, 4 * PAGE, 4 * PAGE)
    addr = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    host.poke(addr + PAGE + 10, b"through the udmabuf")
    assert host.pread(mfd, 19, 5 * PAGE + 10) == b"through the udmabuf"
    host.pwrite(mfd, b"through the memfd", 7 * PAGE)
    assert host.peek(addr + 3 * PAGE, 17) == b"through the memfd"
    m = host.mmap(0, 16 * PAGE, RW, L.MAP_SHARED, mfd, 0)
    assert host.peek(m + 5 * PAGE + 10, 19) == b"through the udmabuf"


def test_mmap_at_an_offset(host, dev, mfd):
    host.pwrite(mfd, b"third page", 2 * PAGE)
    fd = create(host, dev, mfd, 0, 4 * PAGE)
    addr = host.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, fd, 2 * PAGE)
    assert host.peek(addr, 10) == b"third page"


def test_pins_block_f_seal_write_until_closed(host, dev, mfd):
    fd = create(host, dev, mfd, 0, 2 * PAGE)
    addr = host.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
    raises(errno.EBUSY, host.fcntl, mfd, L.F_ADD_SEALS, L.F_SEAL_WRITE)  # memfd_wait_for_pins
    host.close(fd)
    raises(errno.EBUSY, host.fcntl, mfd, L.F_ADD_SEALS, L.F_SEAL_WRITE)  # the VMA holds it
    host.munmap(addr, 2 * PAGE)
    assert host.fcntl(mfd, L.F_ADD_SEALS, L.F_SEAL_WRITE) == 0
    # and now the memfd is no longer acceptable
    raises(errno.EINVAL, create, host, dev, mfd, 0, PAGE)


def test_buffer_outlives_the_memfd(host, dev):
    m = memfd(host, 2)
    host.pwrite(m, b"kept by the pins", 0)
    fd = create(host, dev, m, 0, 2 * PAGE)
    host.close(m)
    addr = host.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, fd, 0)
    assert host.peek(addr, 16) == b"kept by the pins"


def test_sync_end_before_start_einval(host, dev, mfd):
    fd = create(host, dev, mfd, 0, PAGE)
    end = D.dma_buf_sync(D.DMA_BUF_SYNC_END | D.DMA_BUF_SYNC_RW)
    raises(errno.EINVAL, host.ioctl, fd, D.DMA_BUF_IOCTL_SYNC, end)  # end_cpu_udmabuf: no sg
    host.ioctl(fd, D.DMA_BUF_IOCTL_SYNC, D.dma_buf_sync(D.DMA_BUF_SYNC_START | D.DMA_BUF_SYNC_RW))
    assert host.ioctl(fd, D.DMA_BUF_IOCTL_SYNC, end) == 0
