"""Regression tests for the model defects of issue 9 §1 that an independent fuzzer found
(SimHost; tests/conformance/test_limits.py runs the same calls on the real kernel)."""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = L.PAGE_SIZE
ANON = L.MAP_PRIVATE | L.MAP_ANONYMOUS


def raises(err: int, fn, *args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == err, e.value


def test_kvm_run_on_read_only_private_anonymous_slot() -> None:
    # Was: passthru.Fault (then EFAULT) from KVM_RUN. The kernel maps the zero page read-only.
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    vm = h.ioctl(kfd, K.KVM_CREATE_VM, 0)
    mem = h.mmap(0, 0x10000, L.PROT_READ, ANON, -1, 0)
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
        slot=0, guest_phys_addr=0xFFFF0000, memory_size=0x10000, userspace_addr=mem))
    vcpu = h.ioctl(vm, K.KVM_CREATE_VCPU, 0)
    assert h.ioctl(vcpu, K.KVM_RUN, 0) == 0
    # the guest's view is zeros, mapped read-only: a guest store does not reach the zero page
    mmu = h.proc.lookup_fd(vm).kvm.mmu  # type: ignore[attr-defined]
    zero = mmu.spte.lookup(0xFFFFF000)
    assert zero is not None and h.kernel.phys.owner_of(zero).owner == "zero-page"
    assert not mmu.writable.lookup(0xFFFFF000)
    assert h.peek(mem, 16) == bytes(16)
    h.exit()
    assert h.leaks() == []
    assert h.sched.violations == []


def test_mmap_negative_length_enomem() -> None:
    h = SimHost()
    raises(errno.ENOMEM, h.mmap, 0, -4096, L.PROT_READ, ANON, -1, 1 << 20)
    assert h.proc.mm.vmas == {}
    a = h.mmap(0, PAGE, L.PROT_READ, ANON, -1, 0)
    raises(errno.ENOMEM, h.mmap, a, -4096, L.PROT_READ, ANON | L.MAP_FIXED_NOREPLACE, -1, 0)
    h.munmap(a, PAGE)
    assert h.proc.mm.vmas == {}
    h.exit()
    assert h.leaks() == []


def test_munmap_wrapping_range_einval() -> None:
    h = SimHost()
    a = h.mmap(0, PAGE, L.PROT_READ, ANON, -1, 0)
    raises(errno.EINVAL, h.munmap, -(1 << 44), (1 << 44) + 0x7F0000000000)
    assert list(h.proc.mm.vmas) == [a]
    h.exit()


def test_memfd_name_without_bytes_einval() -> None:
    h = SimHost()
    raises(errno.EINVAL, h.memfd_create, "\ud800", 0)
    assert h.memfd_create("\udc80", 0) >= 0  # surrogateescape: the byte 0x80 reaches the kernel


def test_pread_pwrite_loff_t_limits() -> None:
    h = SimHost()
    fd = h.memfd_create("x", 0)
    raises(errno.EINVAL, h.pwrite, fd, b"x", 1 << 63)  # a negative loff_t
    raises(errno.EINVAL, h.pread, fd, 1, (1 << 64) - 1)
    raises(errno.EINVAL, h.pwrite, fd, b"xy", (1 << 63) - 2)  # pos + count past LLONG_MAX
    assert h.pwrite(fd, b"x", (1 << 63) - 2) == 1
    raises(errno.EINVAL, h.read, fd, -1)
    raises(errno.EINVAL, h.read, fd, 1 << 63)
    h.exit()
    assert h.leaks() == []


def test_read_of_sparse_memfd_is_capped_and_allocates_nothing() -> None:
    h = SimHost()
    fd = h.memfd_create("sparse", 0)
    h.ftruncate(fd, 1 << 40)
    before = h.kernel.phys.allocated_bytes()
    assert len(h.read(fd, 1 << 36)) == 0x7FFFF000  # MAX_RW_COUNT
    assert h.kernel.phys.allocated_bytes() == before
    h.exit()
    assert h.leaks() == []


def test_uapi_struct_refuses_unknown_names_and_out_of_range_values() -> None:
    with pytest.raises(TypeError, match="no field 'sz'.*size, flags, reserved"):
        K.kvm_create_guest_memfd(sz=4096)
    with pytest.raises(ValueError, match="'size'"):
        K.kvm_create_guest_memfd(size=-1)
    with pytest.raises(ValueError, match="'slot'"):
        K.kvm_userspace_memory_region(slot=1 << 32)
    with pytest.raises(ValueError, match="'slot'"):
        K.kvm_userspace_memory_region(-1)  # positional too
    assert K.kvm_create_guest_memfd(size=(1 << 64) - 1).size == (1 << 64) - 1
    # an anonymous member's fields are names the constructor accepts
    run = K.kvm_run(exit_reason=K.KVM_EXIT_MMIO)
    assert run.exit_reason == K.KVM_EXIT_MMIO
