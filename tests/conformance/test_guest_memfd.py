"""guest_memfd (virt/kvm/guest_memfd.c) as the 6.18 kernel answers it (KERNEL.md §5, §9)."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import kvm
from passthru.uapi import linux as L

from ._kvm import create_gmem, create_vm, open_kvm
from ._probe import PAGE, expect_no_signal, expect_sigbus, expect_signal

pytestmark = pytest.mark.node("/dev/kvm")

MMAP = kvm.GUEST_MEMFD_FLAG_MMAP
SHARED = kvm.GUEST_MEMFD_FLAG_INIT_SHARED
RW = L.PROT_READ | L.PROT_WRITE
KEEP = L.FALLOC_FL_KEEP_SIZE
PUNCH = L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE


@pytest.fixture
def vm(host):
    return create_vm(host, open_kvm(host))


# -- KVM_CREATE_GUEST_MEMFD ---------------------------------------------------------------


@pytest.mark.parametrize("flags", [0, MMAP, MMAP | SHARED], ids=["0", "MMAP", "MMAP|INIT_SHARED"])
def test_create_ok(host, vm, flags):
    assert create_gmem(host, vm, 4 * PAGE, flags) >= 0


def test_create_init_shared_without_mmap_accepted(host, vm):
    # INIT_SHARED alone is not refused, though without MMAP nothing can map it (below)
    assert create_gmem(host, vm, PAGE, SHARED) >= 0


@pytest.mark.parametrize(
    ("size", "flags"),
    [(4095, 0), (0, 0), (PAGE, 1 << 63), (PAGE, 1 << 2)],
    ids=["size4095", "size0", "flag63", "flag2"],
)
def test_create_einval(host, vm, size, flags):
    with pytest.raises(OSError) as e:
        create_gmem(host, vm, size, flags)
    assert e.value.errno == errno.EINVAL


def test_create_reserved_nonzero_accepted(host, vm):
    assert create_gmem(host, vm, PAGE, 0, reserved0=1) >= 0


def test_create_huge_size_accepted(host, vm):
    # nothing is allocated at creation: a 1 TiB guest_memfd is just a size
    assert create_gmem(host, vm, 1 << 40) >= 0


# -- mmap ------------------------------------------------------------------------------


def test_mmap_without_mmap_flag_enodev(host, vm):
    g = create_gmem(host, vm, PAGE, 0)
    with pytest.raises(OSError) as e:
        host.mmap(0, PAGE, RW, L.MAP_SHARED, g, 0)
    assert e.value.errno == errno.ENODEV


def test_mmap_init_shared_without_mmap_flag_enodev(host, vm):
    g = create_gmem(host, vm, PAGE, SHARED)
    with pytest.raises(OSError) as e:
        host.mmap(0, PAGE, RW, L.MAP_SHARED, g, 0)
    assert e.value.errno == errno.ENODEV


def test_mmap_private_einval(host, vm):
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    with pytest.raises(OSError) as e:
        host.mmap(0, PAGE, RW, L.MAP_PRIVATE, g, 0)
    assert e.value.errno == errno.EINVAL


def test_mmap_misaligned_offset_einval(host, vm):
    g = create_gmem(host, vm, 2 * PAGE, MMAP | SHARED)
    with pytest.raises(OSError) as e:
        host.mmap(0, PAGE, RW, L.MAP_SHARED, g, 0x100)
    assert e.value.errno == errno.EINVAL


def test_mmap_prot_exec_eperm(host, vm):
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    with pytest.raises(OSError) as e:
        host.mmap(0, PAGE, L.PROT_READ | L.PROT_EXEC, L.MAP_SHARED, g, 0)
    assert e.value.errno == errno.EPERM


def test_mmap_past_size_accepted(host, vm):
    # the size is checked at fault time, not at mmap time
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    assert host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, g, 0) > 0
    assert host.mmap(0, PAGE, RW, L.MAP_SHARED, g, 8 * PAGE) > 0


def test_shared_write_read_back(host, vm):
    g = create_gmem(host, vm, 4 * PAGE, MMAP | SHARED)
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, g, 0)
    assert host.peek(a, 16) == bytes(16)  # starts zeroed
    host.poke(a + PAGE + 5, b"guest_memfd")
    assert host.peek(a + PAGE + 5, 11) == b"guest_memfd"
    # a second mapping of the same file sees the same page
    b = host.mmap(0, 4 * PAGE, L.PROT_READ, L.MAP_SHARED, g, 0)
    assert host.peek(b + PAGE + 5, 11) == b"guest_memfd"


def test_touch_private_page_sigbus(host, vm):
    g = create_gmem(host, vm, 4 * PAGE, MMAP)
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, g, 0)
    expect_sigbus(host, lambda: host.peek(a, 1), address=a)
    expect_sigbus(host, lambda: host.poke(a + PAGE, b"x"), address=a + PAGE)


def test_touch_past_size_sigbus(host, vm):
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    a = host.mmap(0, 2 * PAGE, RW, L.MAP_SHARED, g, 0)
    expect_no_signal(host, lambda: host.peek(a, 1))
    expect_sigbus(host, lambda: host.peek(a + PAGE, 1), address=a + PAGE)


def test_write_through_read_only_mapping_sigsegv(host, vm):
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    a = host.mmap(0, PAGE, L.PROT_READ, L.MAP_SHARED, g, 0)
    assert host.peek(a, 1) == b"\0"
    expect_signal(host, lambda: host.poke(a, b"x"), "SIGSEGV", address=a)


# -- fallocate ---------------------------------------------------------------------------


def test_punch_hole_zeroes_only_that_page(host, vm):
    g = create_gmem(host, vm, 4 * PAGE, MMAP | SHARED)
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, g, 0)
    host.poke(a, b"A" * (4 * PAGE))
    host.fallocate(g, PUNCH, PAGE, PAGE)
    data = host.peek(a, 4 * PAGE)
    assert data[:PAGE] == b"A" * PAGE
    assert data[PAGE : 2 * PAGE] == bytes(PAGE)
    assert data[2 * PAGE :] == b"A" * (2 * PAGE)


@pytest.mark.parametrize(("offset", "length"), [(0x100, PAGE), (0, 100)], ids=["offset", "length"])
def test_punch_hole_misaligned_einval(host, vm, offset, length):
    g = create_gmem(host, vm, 4 * PAGE)
    with pytest.raises(OSError) as e:
        host.fallocate(g, PUNCH, offset, length)
    assert e.value.errno == errno.EINVAL


def test_punch_hole_beyond_size_accepted(host, vm):
    g = create_gmem(host, vm, 4 * PAGE)
    host.fallocate(g, PUNCH, 4 * PAGE, PAGE)
    host.fallocate(g, PUNCH, 64 * PAGE, PAGE)


@pytest.mark.parametrize(
    "mode",
    [
        0,
        L.FALLOC_FL_PUNCH_HOLE,
        L.FALLOC_FL_ZERO_RANGE | KEEP,
        L.FALLOC_FL_COLLAPSE_RANGE,
        L.FALLOC_FL_INSERT_RANGE,
    ],
    ids=["0", "PUNCH_HOLE", "ZERO_RANGE|KEEP", "COLLAPSE", "INSERT"],
)
def test_fallocate_unsupported_mode_eopnotsupp(host, vm, mode):
    g = create_gmem(host, vm, 4 * PAGE)
    with pytest.raises(OSError) as e:
        host.fallocate(g, mode, 0, PAGE)
    assert e.value.errno == errno.EOPNOTSUPP


def test_fallocate_keep_size_inside_ok(host, vm):
    g = create_gmem(host, vm, 4 * PAGE)
    host.fallocate(g, KEEP, 0, 4 * PAGE)
    host.fallocate(g, KEEP, PAGE, PAGE)


@pytest.mark.parametrize(
    ("offset", "length"),
    [(4 * PAGE, PAGE), (3 * PAGE, 2 * PAGE), (0x100, PAGE), (0, 100)],
    ids=["beyond", "straddling", "misaligned-offset", "misaligned-length"],
)
def test_fallocate_keep_size_einval(host, vm, offset, length):
    g = create_gmem(host, vm, 4 * PAGE)
    with pytest.raises(OSError) as e:
        host.fallocate(g, KEEP, offset, length)
    assert e.value.errno == errno.EINVAL


# -- other file operations ---------------------------------------------------------------


@pytest.mark.parametrize("length", [8 * PAGE, 4 * PAGE, 0], ids=["grow", "same", "zero"])
def test_ftruncate_einval(host, vm, length):
    g = create_gmem(host, vm, 4 * PAGE)
    with pytest.raises(OSError) as e:
        host.ftruncate(g, length)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("flags", [0, MMAP | SHARED], ids=["private", "shared"])
def test_read_write_einval(host, vm, flags):
    g = create_gmem(host, vm, PAGE, flags)
    with pytest.raises(OSError) as e:
        host.read(g, 16)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        host.write(g, b"x")
    assert e.value.errno == errno.EINVAL


def test_pread_pwrite_espipe(host, vm):
    # the file is not seekable (no FMODE_PREAD/PWRITE): positioned I/O fails before read/write
    g = create_gmem(host, vm, PAGE, MMAP | SHARED)
    with pytest.raises(OSError) as e:
        host.pread(g, 16, 0)
    assert e.value.errno == errno.ESPIPE
    with pytest.raises(OSError) as e:
        host.pwrite(g, b"x", 0)
    assert e.value.errno == errno.ESPIPE


@pytest.mark.parametrize(
    ("cmd", "arg"),
    [(L.F_GET_SEALS, 0), (L.F_ADD_SEALS, L.F_SEAL_WRITE)],
    ids=["F_GET_SEALS", "F_ADD_SEALS"],
)
def test_seals_einval(host, vm, cmd, arg):
    g = create_gmem(host, vm, PAGE)
    with pytest.raises(OSError) as e:
        host.fcntl(g, cmd, arg)
    assert e.value.errno == errno.EINVAL
