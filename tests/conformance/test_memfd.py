"""memfd and its seals (mm/memfd.c, mm/shmem.c; KERNEL.md §9), plus the plain mmap/munmap
errno a VMM meets. No device node needed: these run on every LinuxHost."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import linux as L

from ._probe import PAGE, expect_no_signal, expect_sigbus

RW = L.PROT_READ | L.PROT_WRITE
SGW = L.F_SEAL_SHRINK | L.F_SEAL_GROW | L.F_SEAL_WRITE


def raises(errno_: int, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == errno_, e.value


@pytest.fixture
def sealable(host):
    fd = host.memfd_create("sealable", L.MFD_ALLOW_SEALING)
    host.ftruncate(fd, 4 * PAGE)
    return fd


# -- memfd_create -----------------------------------------------------------------------


@pytest.mark.parametrize("flags", [0x40, 1 << 31, L.MFD_EXEC | L.MFD_NOEXEC_SEAL])
def test_memfd_create_bad_flags_einval(host, flags):
    raises(errno.EINVAL, host.memfd_create, "x", flags)


def test_memfd_create_name_length(host):
    assert host.memfd_create("n" * L.MFD_NAME_MAX, 0) >= 0
    assert host.memfd_create("", 0) >= 0
    raises(errno.EINVAL, host.memfd_create, "n" * (L.MFD_NAME_MAX + 1), 0)


# -- seals -------------------------------------------------------------------------------


def test_get_seals_values(host, sealable):
    assert host.fcntl(sealable, L.F_GET_SEALS) == 0
    # without MFD_ALLOW_SEALING the file is born sealed with F_SEAL_SEAL
    assert host.fcntl(host.memfd_create("plain", 0), L.F_GET_SEALS) == L.F_SEAL_SEAL
    # MFD_NOEXEC_SEAL implies sealing allowed, with F_SEAL_EXEC set
    noexec = host.memfd_create("noexec", L.MFD_NOEXEC_SEAL)
    assert host.fcntl(noexec, L.F_GET_SEALS) == L.F_SEAL_EXEC
    assert host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_SHRINK) == 0
    assert host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_GROW | L.F_SEAL_SHRINK) == 0
    assert host.fcntl(sealable, L.F_GET_SEALS) == L.F_SEAL_SHRINK | L.F_SEAL_GROW


def test_sealing_without_allow_sealing_eperm(host):
    fd = host.memfd_create("plain", 0)
    raises(errno.EPERM, host.fcntl, fd, L.F_ADD_SEALS, L.F_SEAL_SHRINK)
    raises(errno.EPERM, host.fcntl, fd, L.F_ADD_SEALS, 0)


def test_add_seals_after_seal_seal_eperm(host, sealable):
    host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_SEAL | L.F_SEAL_WRITE)
    assert host.fcntl(sealable, L.F_GET_SEALS) == L.F_SEAL_SEAL | L.F_SEAL_WRITE
    raises(errno.EPERM, host.fcntl, sealable, L.F_ADD_SEALS, L.F_SEAL_SHRINK)
    raises(errno.EPERM, host.fcntl, sealable, L.F_ADD_SEALS, L.F_SEAL_WRITE)  # already set
    raises(errno.EPERM, host.fcntl, sealable, L.F_ADD_SEALS, 0)


@pytest.mark.parametrize("seals", [0x40, 1 << 31])
def test_unknown_seal_einval(host, sealable, seals):
    raises(errno.EINVAL, host.fcntl, sealable, L.F_ADD_SEALS, seals)


def test_seals_on_non_memfd_einval(host):
    import os

    if not os.path.exists("/dev/null"):  # pragma: no cover
        pytest.skip("/dev/null absent")
    fd = host.open("/dev/null", L.O_RDWR)
    raises(errno.EINVAL, host.fcntl, fd, L.F_GET_SEALS)
    raises(errno.EINVAL, host.fcntl, fd, L.F_ADD_SEALS, L.F_SEAL_WRITE)


def test_seal_write_with_writable_shared_mapping_ebusy(host, sealable):
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, sealable, 0)
    raises(errno.EBUSY, host.fcntl, sealable, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    # F_SEAL_FUTURE_WRITE only stops new writers: the existing mapping is fine
    assert host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_FUTURE_WRITE) == 0
    host.munmap(a, 4 * PAGE)
    assert host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_WRITE) == 0


def test_seal_write_with_read_only_shared_mapping_ebusy(host, sealable):
    # the fd is O_RDWR, so a PROT_READ MAP_SHARED mapping is still VM_MAYWRITE (mprotect could
    # make it writable) and counts as a writer
    a = host.mmap(0, 4 * PAGE, L.PROT_READ, L.MAP_SHARED, sealable, 0)
    raises(errno.EBUSY, host.fcntl, sealable, L.F_ADD_SEALS, L.F_SEAL_WRITE)
    host.munmap(a, 4 * PAGE)
    # a private mapping never writes back: no obstacle
    host.mmap(0, 4 * PAGE, RW, L.MAP_PRIVATE, sealable, 0)
    assert host.fcntl(sealable, L.F_ADD_SEALS, L.F_SEAL_WRITE) == 0


@pytest.fixture
def sealed(host, sealable):
    host.pwrite(sealable, b"sealed", 0)
    host.fcntl(sealable, L.F_ADD_SEALS, SGW)
    return sealable


def test_sealed_writable_shared_mmap_eperm(host, sealed):
    raises(errno.EPERM, host.mmap, 0, 4 * PAGE, RW, L.MAP_SHARED, sealed, 0)


def test_sealed_read_only_and_private_mmap_ok(host, sealed):
    ro = host.mmap(0, 4 * PAGE, L.PROT_READ, L.MAP_SHARED, sealed, 0)
    assert host.peek(ro, 6) == b"sealed"
    # a private writable mapping is copy-on-write: it cannot change the file, so allowed
    priv = host.mmap(0, 4 * PAGE, RW, L.MAP_PRIVATE, sealed, 0)
    host.poke(priv, b"cow")
    assert host.pread(sealed, 6, 0) == b"sealed"


def test_sealed_ftruncate_eperm(host, sealed):
    raises(errno.EPERM, host.ftruncate, sealed, PAGE)
    raises(errno.EPERM, host.ftruncate, sealed, 8 * PAGE)
    host.ftruncate(sealed, 4 * PAGE)  # same size: allowed


def test_sealed_write_eperm(host, sealed):
    raises(errno.EPERM, host.pwrite, sealed, b"x", 0)
    raises(errno.EPERM, host.write, sealed, b"x")
    assert host.pread(sealed, 6, 0) == b"sealed"


def test_sealed_fallocate(host, sealed):
    raises(errno.EPERM, host.fallocate, sealed, 0, 0, 8 * PAGE)  # grows
    raises(
        errno.EPERM, host.fallocate, sealed, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, PAGE
    )
    host.fallocate(sealed, L.FALLOC_FL_KEEP_SIZE, 0, PAGE)  # allocates, changes nothing


# -- size and I/O ------------------------------------------------------------------------


def test_pwrite_pread_round_trip(host):
    fd = host.memfd_create("io", 0)
    assert host.pread(fd, 10, 0) == b""  # empty file
    assert host.pwrite(fd, b"hello", PAGE) == 5  # extends the file
    assert host.pread(fd, 7, PAGE - 2) == b"\0\0hello"
    assert host.pread(fd, 100, PAGE) == b"hello"  # short read at EOF


def test_read_write_use_file_position(host):
    fd = host.memfd_create("pos", 0)
    assert host.write(fd, b"abc") == 3
    assert host.write(fd, b"def") == 3
    assert host.pread(fd, 6, 0) == b"abcdef"
    assert host.read(fd, 3) == b""  # the position is at EOF


def test_ftruncate_grow_and_shrink_visible_through_pread(host):
    fd = host.memfd_create("size", 0)
    host.pwrite(fd, b"hello", PAGE)
    host.ftruncate(fd, PAGE + 2)
    assert host.pread(fd, 100, PAGE) == b"he"
    host.ftruncate(fd, 2 * PAGE)
    assert host.pread(fd, 5, PAGE) == b"he\0\0\0"
    assert len(host.pread(fd, 4 * PAGE, 0)) == 2 * PAGE


def test_ftruncate_negative_einval(host):
    raises(errno.EINVAL, host.ftruncate, host.memfd_create("neg", 0), -1)


def test_fallocate_modes(host):
    fd = host.memfd_create("falloc", 0)
    host.fallocate(fd, 0, 0, 3 * PAGE)  # mode 0 extends the size
    assert len(host.pread(fd, 4 * PAGE, 0)) == 3 * PAGE
    host.fallocate(fd, L.FALLOC_FL_KEEP_SIZE, 3 * PAGE, PAGE)  # beyond EOF, size kept
    assert len(host.pread(fd, 8 * PAGE, 0)) == 3 * PAGE
    raises(errno.EOPNOTSUPP, host.fallocate, fd, L.FALLOC_FL_PUNCH_HOLE, 0, PAGE)
    raises(errno.EOPNOTSUPP, host.fallocate, fd, L.FALLOC_FL_ZERO_RANGE, 0, PAGE)
    raises(errno.EOPNOTSUPP, host.fallocate, fd, L.FALLOC_FL_COLLAPSE_RANGE, 0, PAGE)
    raises(errno.EINVAL, host.fallocate, fd, 0, 0, 0)


def test_punch_hole_misaligned_zeroes_bytes(host):
    # unlike guest_memfd, shmem accepts a misaligned hole and zeroes exactly those bytes
    fd = host.memfd_create("punch", 0)
    host.pwrite(fd, b"ABCDEFGH", 0)
    host.fallocate(fd, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 2, 3)
    assert host.pread(fd, 8, 0) == b"AB\0\0\0FGH"


def test_mmap_shared_sees_file_and_sigbus_past_eof(host):
    fd = host.memfd_create("map", 0)
    host.ftruncate(fd, PAGE)
    a = host.mmap(0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)  # longer than the file: allowed
    host.poke(a + 10, b"via-mmap")
    assert host.pread(fd, 8, 10) == b"via-mmap"
    host.pwrite(fd, b"via-pwrite", 100)
    assert host.peek(a + 100, 10) == b"via-pwrite"
    expect_sigbus(host, lambda: host.peek(a + PAGE, 1), address=a + PAGE)
    host.ftruncate(fd, 2 * PAGE)
    expect_no_signal(host, lambda: host.peek(a + PAGE, 1))


# -- mmap / munmap -----------------------------------------------------------------------


def test_mmap_errors(host):
    fd = host.memfd_create("m", 0)
    host.ftruncate(fd, PAGE)
    raises(errno.EINVAL, host.mmap, 0, 0, RW, L.MAP_SHARED, fd, 0)  # length 0
    raises(errno.EINVAL, host.mmap, 0, PAGE, RW, 0, fd, 0)  # neither SHARED nor PRIVATE
    raises(errno.EINVAL, host.mmap, 0, PAGE, RW, L.MAP_SHARED, fd, 0x100)  # offset
    closed = host.memfd_create("closed", 0)
    host.close(closed)
    raises(errno.EBADF, host.mmap, 0, PAGE, RW, L.MAP_SHARED, closed, 0)
    # pgoff is unsigned: a negative offset is past any file (file_mmap_ok)
    raises(errno.EOVERFLOW, host.mmap, 0, PAGE, RW, L.MAP_SHARED, fd, -PAGE)
    # MAP_SHARED_VALIDATE refuses flags outside LEGACY_MAP_MASK (here MAP_FIXED_NOREPLACE)
    raises(errno.EOPNOTSUPP, host.mmap, 0, PAGE, RW,
           L.MAP_SHARED_VALIDATE | L.MAP_FIXED_NOREPLACE, fd, 0)
    assert host.mmap(0, PAGE, RW, L.MAP_SHARED_VALIDATE | L.MAP_POPULATE, fd, 0) > 0


def test_munmap_errors(host):
    a = host.mmap(0, 2 * PAGE, RW, L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    raises(errno.EINVAL, host.munmap, a + 1, PAGE)  # unaligned address
    raises(errno.EINVAL, host.munmap, a, 0)  # length 0
    host.munmap(a, 2 * PAGE)
    host.munmap(a, 2 * PAGE)  # nothing mapped there any more: still success
