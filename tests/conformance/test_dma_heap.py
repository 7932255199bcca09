"""DMA-BUF heaps (drivers/dma-buf/dma-heap.c, heaps/system_heap.c, heaps/cma_heap.c;
KERNEL.md §1 "Heaps", §9's QEMU-guest paragraph): DMA_HEAP_IOCTL_ALLOC's checks and the
exported buffer's mmap. Only the Host protocol and passthru.uapi, so the linux variant runs
wherever the node exists (it skips, naming the node, where it does not)."""

from __future__ import annotations

import ctypes
import errno

import pytest

from passthru.uapi import dma_buf as D
from passthru.uapi import dma_heap as H
from passthru.uapi import linux as L
from passthru.uapi.ioctl import _IO, _IOWR

from ._probe import PAGE

SYSTEM = "/dev/dma_heap/system"
CMA = "/dev/dma_heap/reserved"
RW = L.PROT_READ | L.PROT_WRITE

pytestmark = pytest.mark.node(SYSTEM)


def raises(err: int, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == err, e.value
    return e.value


def adopt(host, fd: int) -> int:
    """LinuxHost tracks fds it can see; the heap writes the new one into the struct."""
    track = getattr(host, "adopt", None)
    return track(fd) if track is not None else fd


def alloc_data(length: int, fd_flags: int = L.O_RDWR | L.O_CLOEXEC, heap_flags: int = 0,
               fd: int = 0) -> H.dma_heap_allocation_data:
    return H.dma_heap_allocation_data(len=length, fd=fd, fd_flags=fd_flags,
                                      heap_flags=heap_flags)


def alloc(host, heap: int, length: int, fd_flags: int = L.O_RDWR | L.O_CLOEXEC) -> int:
    data = alloc_data(length, fd_flags)
    assert host.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, data) == 0
    assert data.fd > 0
    return adopt(host, data.fd)


@pytest.fixture
def heap(host):
    return host.open(SYSTEM, L.O_RDWR | L.O_CLOEXEC)


# -- DMA_HEAP_IOCTL_ALLOC ----------------------------------------------------------------------


def test_alloc_writes_the_fd_back(host, heap):
    data = alloc_data(4 * PAGE)
    assert host.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, data) == 0
    fd = adopt(host, data.fd)
    assert fd > 0 and fd != heap
    assert data.len == 4 * PAGE and data.fd_flags == L.O_RDWR | L.O_CLOEXEC
    host.close(fd)


@pytest.mark.parametrize(("fd_flags", "cloexec"), [
    (L.O_RDWR | L.O_CLOEXEC, L.FD_CLOEXEC), (L.O_RDWR, 0)], ids=["cloexec", "no-cloexec"])
def test_alloc_o_cloexec(host, heap, fd_flags, cloexec):
    fd = alloc(host, heap, PAGE, fd_flags)
    assert host.fcntl(fd, L.F_GETFD) == cloexec


@pytest.mark.parametrize("mode", [L.O_RDONLY, L.O_WRONLY, L.O_RDWR, L.O_ACCMODE])
def test_alloc_any_access_mode(host, heap, mode):
    assert alloc(host, heap, PAGE, mode | L.O_CLOEXEC) > 0


def test_alloc_o_rdonly_buffer_maps_read_only(host, heap):
    fd = alloc(host, heap, PAGE, L.O_RDONLY)
    addr = host.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, fd, 0)
    assert host.peek(addr, 8) == bytes(8)  # heap memory comes zeroed
    raises(errno.EACCES, host.mmap, 0, PAGE, RW, L.MAP_SHARED, fd, 0)


@pytest.mark.parametrize("bits", [L.O_NONBLOCK, L.O_APPEND, L.O_CREAT, 1 << 31],
                         ids=["O_NONBLOCK", "O_APPEND", "O_CREAT", "bit31"])
def test_alloc_other_fd_flags_einval(host, heap, bits):
    raises(errno.EINVAL, host.ioctl, heap, H.DMA_HEAP_IOCTL_ALLOC,
           alloc_data(PAGE, L.O_RDWR | bits))


@pytest.mark.parametrize("heap_flags", [1, 1 << 32, 1 << 63])
def test_alloc_heap_flags_einval(host, heap, heap_flags):
    raises(errno.EINVAL, host.ioctl, heap, H.DMA_HEAP_IOCTL_ALLOC,
           alloc_data(PAGE, heap_flags=heap_flags))


@pytest.mark.parametrize("fd", [1, 3, 0xFFFFFFFF])
def test_alloc_input_fd_must_be_zero(host, heap, fd):
    raises(errno.EINVAL, host.ioctl, heap, H.DMA_HEAP_IOCTL_ALLOC, alloc_data(PAGE, fd=fd))


@pytest.mark.parametrize("length", [0, (1 << 64) - 1, (1 << 64) - PAGE + 1],
                         ids=["0", "u64max", "wraps"])
def test_alloc_len_zero_after_page_align_einval(host, heap, length):
    # dma_heap_buffer_alloc: len = PAGE_ALIGN(len); if (!len) return -EINVAL
    raises(errno.EINVAL, host.ioctl, heap, H.DMA_HEAP_IOCTL_ALLOC, alloc_data(length))


@pytest.mark.parametrize(("length", "pages"), [(1, 1), (PAGE, 1), (PAGE + 1, 2), (3 * PAGE - 7, 3)])
def test_alloc_len_rounded_up_to_pages(host, heap, length, pages):
    fd = alloc(host, heap, length)
    addr = host.mmap(0, pages * PAGE, RW, L.MAP_SHARED, fd, 0)
    host.poke(addr + pages * PAGE - 1, b"\x5a")  # the rounded-up tail is real memory
    assert host.peek(addr + pages * PAGE - 1, 1) == b"\x5a"
    # and no further: dma_buf_mmap_internal refuses a mapping past the buffer
    raises(errno.EINVAL, host.mmap, 0, (pages + 1) * PAGE, RW, L.MAP_SHARED, fd, 0)
    raises(errno.EINVAL, host.mmap, 0, PAGE, RW, L.MAP_SHARED, fd, pages * PAGE)


@pytest.mark.parametrize("request_", [
    _IOWR("H", 1, H.dma_heap_allocation_data), _IO("H", 0x10), _IOWR("H", 0xFF, 8)],
    ids=["nr1", "nr16", "nr255"])
def test_unknown_ioctl_einval_not_enotty(host, heap, request_):
    raises(errno.EINVAL, host.ioctl, heap, request_, alloc_data(PAGE))


def test_dispatch_is_on_the_number_only(host, heap):
    # dma_heap_ioctl looks at _IOC_NR alone: another type letter with nr 0 is ALLOC ...
    data = alloc_data(PAGE)
    assert host.ioctl(heap, _IOWR("X", 0, H.dma_heap_allocation_data), data) == 0
    host.close(adopt(host, data.fd))
    # ... and without the direction bits nothing is copied in: it reads as len 0
    raises(errno.EINVAL, host.ioctl, heap, _IO("H", 0), alloc_data(PAGE))


# -- the exported buffer -------------------------------------------------------------------------


def test_mmap_needs_map_shared(host, heap):
    # three pages are three order-0 chunks: remap_pfn_range refuses the COW mapping
    fd = alloc(host, heap, 3 * PAGE)
    raises(errno.EINVAL, host.mmap, 0, 3 * PAGE, RW, L.MAP_PRIVATE, fd, 0)


def test_mappings_share_the_buffer(host, heap):
    fd = alloc(host, heap, 4 * PAGE)
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    b = host.mmap(0, 2 * PAGE, L.PROT_READ, L.MAP_SHARED, fd, 2 * PAGE)  # offset mapping
    host.poke(a + 2 * PAGE + 8, b"heap!")
    assert host.peek(b + 8, 5) == b"heap!"
    host.munmap(a, 4 * PAGE)
    assert host.peek(b + 8, 5) == b"heap!"  # the second mapping keeps the buffer


def test_dma_buf_sync_brackets_cpu_access(host, heap):
    fd = alloc(host, heap, PAGE)
    addr = host.mmap(0, PAGE, RW, L.MAP_SHARED, fd, 0)
    host.ioctl(fd, D.DMA_BUF_IOCTL_SYNC, D.dma_buf_sync(D.DMA_BUF_SYNC_START | D.DMA_BUF_SYNC_RW))
    host.poke(addr, b"x")
    host.ioctl(fd, D.DMA_BUF_IOCTL_SYNC, D.dma_buf_sync(D.DMA_BUF_SYNC_END | D.DMA_BUF_SYNC_RW))
    assert host.peek(addr, 1) == b"x"


def test_buffer_outlives_heap_fd_and_its_own_fd_while_mapped(host, heap):
    fd = alloc(host, heap, PAGE)
    addr = host.mmap(0, PAGE, RW, L.MAP_SHARED, fd, 0)
    host.close(heap)
    host.close(fd)  # the VMA holds the dma-buf's file
    host.poke(addr, b"still")
    assert host.peek(addr, 5) == b"still"


def test_heap_fd_has_no_read_write(host, heap):
    raises(errno.EINVAL, host.read, heap, 8)
    raises(errno.EINVAL, host.write, heap, b"x")


# -- the CMA heap (the default CMA area, "reserved") -----------------------------------------


@pytest.mark.node(CMA)
def test_cma_alloc_and_map_shared(host):
    cma = host.open(CMA, L.O_RDWR | L.O_CLOEXEC)
    fd = alloc(host, cma, 2 * PAGE + 1)
    addr = host.mmap(0, 3 * PAGE, RW, L.MAP_SHARED, fd, 0)
    assert host.peek(addr, 3 * PAGE) == bytes(3 * PAGE)  # cleared by cma_heap_allocate
    host.poke(addr + 2 * PAGE, b"cma")
    assert host.peek(addr + 2 * PAGE, 3) == b"cma"
    raises(errno.EINVAL, host.mmap, 0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)


@pytest.mark.node(CMA)
def test_cma_mmap_private_einval(host):
    cma = host.open(CMA, L.O_RDWR | L.O_CLOEXEC)
    fd = alloc(host, cma, PAGE)
    raises(errno.EINVAL, host.mmap, 0, PAGE, RW, L.MAP_PRIVATE, fd, 0)
    raises(errno.EINVAL, host.mmap, 0, PAGE, L.PROT_READ, L.MAP_PRIVATE, fd, 0)


@pytest.mark.node(CMA)
def test_cma_same_checks_as_system(host):
    cma = host.open(CMA, L.O_RDWR | L.O_CLOEXEC)
    for bad in (alloc_data(0), alloc_data(PAGE, heap_flags=1), alloc_data(PAGE, fd=3),
                alloc_data(PAGE, L.O_RDWR | L.O_NONBLOCK)):
        raises(errno.EINVAL, host.ioctl, cma, H.DMA_HEAP_IOCTL_ALLOC, bad)


def test_struct_size_matches_header():
    assert ctypes.sizeof(H.dma_heap_allocation_data) == 24
