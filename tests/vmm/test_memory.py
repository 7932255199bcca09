"""passthru.vmm.memory: memfd seals, guest_memfd holes, mappings and GuestMemory, on SimHost
and LinuxHost (memfd tests need no device node; guest_memfd ones need /dev/kvm)."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import kvm as K
from passthru.uapi import linux as L
from passthru.vmm import Kvm, Mapping, Memfd

PAGE = L.PAGE_SIZE
GMEM_SHARED = K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED
WRITE_SEALS = L.F_SEAL_SHRINK | L.F_SEAL_GROW | L.F_SEAL_WRITE


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno is not None
    return e.value.errno


def test_memfd_seal_flow(host, assert_released):
    with Memfd(host, "sealed", size=2 * PAGE) as m:
        assert m.seals == 0  # MFD_ALLOW_SEALING
        assert m.pwrite(b"firmware", PAGE) == 8
        assert m.pread(8, PAGE) == b"firmware"
        rw = m.mmap()
        assert rw.read(PAGE, 8) == b"firmware"
        rw.write(0, b"hdr")
        # a writable shared mapping blocks F_SEAL_WRITE (mapping_deny_writable)
        assert errno_of(m.add_seals, L.F_SEAL_WRITE) == errno.EBUSY
        rw.unmap()
        assert rw.closed

        m.add_seals(WRITE_SEALS)
        assert m.seals == WRITE_SEALS
        assert errno_of(m.pwrite, b"x", 0) == errno.EPERM
        assert errno_of(m.truncate, PAGE) == errno.EPERM
        assert errno_of(m.punch_hole, 0, PAGE) == errno.EPERM
        assert errno_of(m.mmap) == errno.EPERM  # writable MAP_SHARED
        with m.mmap(prot=L.PROT_READ) as ro:
            assert ro.read(0, 3) == b"hdr"
        with m.mmap(shared=False) as cow:  # MAP_PRIVATE: copy-on-write, the file is unchanged
            cow.write(0, b"HDR")
            assert cow.read(0, 3) == b"HDR"
        assert m.pread(3, 0) == b"hdr"

        m.add_seals(L.F_SEAL_SEAL)
        assert errno_of(m.add_seals, L.F_SEAL_FUTURE_WRITE) == errno.EPERM
    assert m.closed
    assert_released(host)


def test_memfd_without_allow_sealing(host, assert_released):
    with Memfd(host, "plain", flags=L.MFD_CLOEXEC) as m:
        assert m.seals == L.F_SEAL_SEAL
        assert errno_of(m.add_seals, L.F_SEAL_WRITE) == errno.EPERM
        assert errno_of(m.add_seals, 0x40) in (errno.EPERM, errno.EINVAL)
    assert_released(host)


def test_memfd_allocate_and_punch_hole(host, assert_released):
    with Memfd(host, "holes") as m:
        assert m.size == 0
        m.allocate(0, 2 * PAGE)  # mode 0 grows the file
        assert m.size == 2 * PAGE
        m.allocate(0, 4 * PAGE, keep_size=True)
        assert m.size == 2 * PAGE
        with m.mmap() as view:
            view.write(0, b"\x11" * (2 * PAGE))
            m.punch_hole(PAGE, PAGE)
            assert view.read(PAGE - 1, 2) == b"\x11\x00"
            assert m.pread(1, PAGE) == b"\0"
    assert_released(host)


def test_mapping_bounds_and_close(host, assert_released):
    m = Memfd(host, "bounds", size=PAGE)
    view = m.mmap()
    assert isinstance(view, Mapping) and len(view) == PAGE
    with pytest.raises(ValueError, match="outside"):
        view.read(PAGE - 1, 2)
    with pytest.raises(ValueError, match="outside"):
        view.write(-1, b"x")
    m.close()  # closes its mappings first
    assert view.closed
    with pytest.raises(ValueError, match="closed"):
        view.read(0, 1)
    with pytest.raises(ValueError, match="closed"):
        m.pread(1, 0)
    assert_released(host)


def test_memfd_mapping_outlives_its_fd_with_children_false(host, assert_released):
    m = Memfd(host, "outlive", size=PAGE)
    view = m.mmap()
    view.write(0, b"kept")
    m.close(children=False)  # like close(fd) after mmap: the mapping keeps the file
    assert m.closed and not view.closed
    assert view.read(0, 4) == b"kept"
    view.unmap()
    assert_released(host)


@pytest.mark.needs_kvm
def test_guest_memfd_punch_hole_and_allocate(host, assert_released):
    with Kvm(host) as kvm:
        vm = kvm.create_vm()
        gmem = vm.create_guest_memfd(4 * PAGE, GMEM_SHARED)
        assert (gmem.size, gmem.flags) == (4 * PAGE, GMEM_SHARED)
        view = gmem.mmap()
        for i in range(4):
            view.write(i * PAGE, bytes([0xA0 + i]) * PAGE)
        gmem.punch_hole(PAGE, PAGE)
        assert [view.read(i * PAGE, 1) for i in range(4)] == [b"\xa0", b"\0", b"\xa2", b"\xa3"]
        gmem.allocate(0, 4 * PAGE)
        assert view.read(PAGE, 1) == b"\0"
        # the kernel's checks come back as OSError with its errno
        assert errno_of(gmem.punch_hole, 1, PAGE) == errno.EINVAL  # not page aligned
        assert errno_of(gmem.allocate, 0, 8 * PAGE) == errno.EINVAL  # past the size
        assert errno_of(gmem.mmap, shared=False) == errno.EINVAL  # MAP_PRIVATE
        assert errno_of(host.ftruncate, gmem.fd, 8 * PAGE) == errno.EINVAL
    assert gmem.closed and view.closed
    assert_released(host)


@pytest.mark.needs_kvm
@pytest.mark.parametrize("guest_memfd", [True, False], ids=["guest_memfd", "memfd"])
def test_guest_memory_layout_and_teardown(host, assert_released, guest_memfd):
    with Kvm(host) as kvm:
        vm = kvm.create_vm()
        mem = vm.guest_memory(
            [(0, 0x10000), (0x100000, 4 * PAGE)], guest_memfd=guest_memfd, first_slot=3
        )
        assert [(r.slot, r.gpa, r.size) for r in mem.regions] == [
            (3, 0, 0x10000),
            (4, 0x100000, 4 * PAGE),
        ]
        for r in mem.regions:
            assert (r.gmem is not None) == guest_memfd and (r.memfd is None) == guest_memfd
            assert r.view.length == r.size
        mem.write(0x100000 + PAGE - 2, b"span")
        assert mem.read(0x100000 + PAGE - 2, 4) == b"span"
        with pytest.raises(ValueError, match="not inside one RAM region"):
            mem.read(0xFFFE, 4)
        # a second layout over the same guest-physical range is refused, and leaves nothing
        assert errno_of(vm.guest_memory, [(0x8000, PAGE)], first_slot=9) == errno.EEXIST
        mem.close()
        # the slots are gone, so the same layout can be registered again
        vm.guest_memory([(0, 0x10000)], guest_memfd=guest_memfd, first_slot=3)
    assert_released(host)


@pytest.mark.needs_kvm
def test_guest_memory_with_private_guest_memfd_uses_a_memfd_view(host, assert_released):
    """A guest_memfd without MMAP cannot be the host's view: the region gets a memfd for its
    shared half (userspace_addr), as a confidential VM's RAM does."""
    with Kvm(host) as kvm:
        vm = kvm.create_vm()
        mem = vm.guest_memory([(0, 4 * PAGE)], guest_memfd=True, gmem_flags=0)
        (r,) = mem.regions
        assert r.gmem is not None and r.memfd is not None and r.gmem.flags == 0
        mem.write(0, b"shared")
        assert r.memfd.pread(6, 0) == b"shared"
    assert_released(host)
