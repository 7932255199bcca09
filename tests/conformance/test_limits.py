"""The limits of the syscalls' integer arguments (issue 9): negative and huge lengths and
offsets, as the kernel reads them (unsigned long for mmap/munmap, loff_t and size_t for the
read/write family, MAX_RW_COUNT), and names with no byte encoding. Each runs the same calls
on SimHost and on the running kernel (mm/mmap.c do_mmap, mm/vma.c do_vmi_munmap,
fs/read_write.c rw_verify_area and vfs_read, mm/memfd.c memfd_create)."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import kvm as K
from passthru.uapi import linux as L

from ._probe import PAGE

ANON = L.MAP_PRIVATE | L.MAP_ANONYMOUS
LLONG_MAX = (1 << 63) - 1
MAX_RW_COUNT = 0x7FFFF000  # include/linux/fs.h: INT_MAX & PAGE_MASK


def errno_of(fn, *args):
    """The call's errno, or None when it succeeds."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return None


# -- mmap / munmap: unsigned long arguments ----------------------------------------------


@pytest.mark.parametrize("length", [-PAGE, -1, -(1 << 44), 1 << 47, (1 << 64) - 1])
def test_mmap_negative_or_huge_length_enomem(host, length):
    assert errno_of(host.mmap, 0, length, L.PROT_READ, ANON, -1, 1 << 20) == errno.ENOMEM


def test_mmap_noreplace_negative_length_leaves_the_mapping(host):
    a = host.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE, ANON, -1, 0)
    host.poke(a, b"kept")
    flags = ANON | L.MAP_FIXED_NOREPLACE
    assert errno_of(host.mmap, a, -PAGE, L.PROT_READ, flags, -1, 0) == errno.ENOMEM
    assert host.peek(a, 4) == b"kept"
    host.munmap(a, 4 * PAGE)


@pytest.mark.parametrize("addr, length", [
    (-(1 << 44), (1 << 44) + 0x7F0000000000),  # wraps around to cover the address space
    (-PAGE, PAGE),
    (0, -PAGE),
    (L.TASK_SIZE, 1),
    (L.TASK_SIZE - PAGE, PAGE + 1),
])
def test_munmap_outside_the_address_space_einval(host, addr, length):
    a = host.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, ANON, -1, 0)
    host.poke(a, b"kept")
    assert errno_of(host.munmap, addr, length) == errno.EINVAL
    assert host.peek(a, 4) == b"kept"  # nothing was unmapped
    host.munmap(a, PAGE)


def test_munmap_last_user_page_ok(host):
    assert errno_of(host.munmap, L.TASK_SIZE - PAGE, PAGE) is None


# -- pread / pwrite / read: loff_t positions, size_t counts, MAX_RW_COUNT ------------------


def test_pwrite_up_to_llong_max(host):
    fd = host.memfd_create("big", 0)
    assert host.pwrite(fd, b"ab", LLONG_MAX - 2) == 2  # ends exactly at LLONG_MAX
    assert host.pwrite(fd, b"", LLONG_MAX) == 0
    assert host.pread(fd, 2, LLONG_MAX - 2) == b"ab"
    assert host.pread(fd, 0, LLONG_MAX) == b""


@pytest.mark.parametrize("n, offset", [(1, LLONG_MAX), (2, LLONG_MAX - 1), (1, -1),
                                       (1, -(1 << 63))])
def test_pwrite_past_llong_max_or_negative_einval(host, n, offset):
    # rw_verify_area: position + count past LLONG_MAX is EINVAL (shmem's s_maxbytes is
    # LLONG_MAX, so a write never gets as far as generic_write_checks' EFBIG)
    fd = host.memfd_create("big", 0)
    assert errno_of(host.pwrite, fd, b"x" * n, offset) == errno.EINVAL
    assert errno_of(host.pread, fd, n, offset) == errno.EINVAL


def test_read_is_capped_at_max_rw_count(host):
    fd = host.memfd_create("sparse", 0)
    host.ftruncate(fd, 1 << 40)
    assert len(host.pread(fd, MAX_RW_COUNT + 1, 5)) == MAX_RW_COUNT


@pytest.mark.parametrize("offset, length", [(-1, PAGE), (0, -1), (LLONG_MAX, 1),
                                            (-(1 << 63), PAGE)])
def test_fallocate_ftruncate_limits(host, offset, length):
    fd = host.memfd_create("x", 0)
    want = errno.EFBIG if offset == LLONG_MAX else errno.EINVAL
    assert errno_of(host.fallocate, fd, 0, offset, length) == want
    if min(offset, length) < 0:
        assert errno_of(host.ftruncate, fd, min(offset, length)) == errno.EINVAL


# -- memfd_create: names ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["\ud800", "ok\udbff", "\udfff"])
def test_memfd_name_without_bytes_einval(host, name):
    # a lone surrogate outside U+DC80..U+DCFF has no os.fsencode bytes: no syscall is made,
    # and both hosts refuse the name as invalid
    assert errno_of(host.memfd_create, name, 0) == errno.EINVAL


@pytest.mark.parametrize("name, ok", [("\udc80\udcff", True), ("a\x00" + "b" * 300, True),
                                      ("é" * 124, True), ("é" * 125, False)])
def test_memfd_name_bytes(host, name, ok):
    # surrogateescape bytes reach the kernel as they are; the name ends at its first NUL;
    # MFD_NAME_MAX (249) counts bytes
    assert errno_of(host.memfd_create, name, 0) == (None if ok else errno.EINVAL)


# -- KVM: a slot backed by read-only private anonymous memory -------------------------------


@pytest.mark.needs_kvm
def test_kvm_run_on_read_only_private_anonymous_slot(host):
    """The guest's fetch from unpopulated PROT_READ private memory reads the zero page
    (mapped read-only): KVM_RUN returns 0, exactly as with a writable mapping (the exit that
    follows is the emulator's: the model's subset of x86 differs from the kernel there)."""
    exits = []
    for prot in (L.PROT_READ, L.PROT_READ | L.PROT_WRITE):
        kfd = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
        vm = host.ioctl(kfd, K.KVM_CREATE_VM, 0)
        mem = host.mmap(0, 0x10000, prot, ANON, -1, 0)
        host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0xFFFF0000, memory_size=0x10000, userspace_addr=mem))
        vcpu = host.ioctl(vm, K.KVM_CREATE_VCPU, 0)
        size = host.ioctl(kfd, K.KVM_GET_VCPU_MMAP_SIZE, 0)
        run = host.mmap(0, size, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, vcpu, 0)
        assert host.ioctl(vcpu, K.KVM_RUN, 0) == 0
        exits.append(K.kvm_run.from_buffer_copy(host.peek(run, K.ctypes.sizeof(K.kvm_run)))
                     .exit_reason)
        assert host.peek(mem, 16) == bytes(16)  # nothing was written to the VMM's memory
        for fd in (vcpu, vm, kfd):
            host.close(fd)
        host.munmap(run, size)
        host.munmap(mem, 0x10000)
    assert exits[0] == exits[1]
