"""Minimal reproducers of model bugs the syscall fuzzer (test_syscall_fuzz.py) found.

Each open bug is xfail(strict=True): when the model is fixed the test passes, strict makes that
a failure, and whoever fixed it flips the mark (and drops the bug's entry from KNOWN_BUGS in
test_syscall_fuzz.py, if it has one). Fixed bugs stay here as plain regression tests.
"""

from __future__ import annotations

import errno

import pytest

from passthru import SimHost
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = L.PAGE_SIZE


def vm_of(host: SimHost) -> int:
    kfd = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
    return host.ioctl(kfd, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)


def test_vcpu_run_pages_freed_with_the_vm() -> None:
    # Fixed: Kvm.destroy once left every vCPU's kvm_run pages allocated.
    host = SimHost()
    host.ioctl(vm_of(host), K.KVM_CREATE_VCPU, 0)
    host.exit()
    assert host.leaks() == []


def test_create_vcpu_with_fragmented_free_ram() -> None:
    # Fixed: Vcpu.__init__ unpacked phys.alloc() as a single extent (ValueError).
    host = SimHost()
    mfd = host.memfd_create("ram", 0)
    host.write(mfd, bytes(3 * PAGE))  # three pages, first fit: physically contiguous
    # free the middle one: the first free extent is now a single page
    host.fallocate(mfd, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, PAGE, PAGE)
    assert host.ioctl(vm_of(host), K.KVM_CREATE_VCPU, 0) >= 0
    host.exit()
    assert host.leaks() == []


def test_failed_memfd_fallocate_allocates_nothing() -> None:
    # Fixed: the pages allocated before ENOMEM stayed; shmem_fallocate undoes them.
    host = SimHost()
    mfd = host.memfd_create("ram", 0)
    host.pwrite(mfd, b"x", 1 << 30)  # one page at 1 GiB splits the range into two holes
    before = host.kernel.phys.allocated_bytes()
    with pytest.raises(OSError):
        host.fallocate(mfd, 0, 0, 100 << 30)  # more than the machine's 63 GiB of RAM
    assert host.kernel.phys.allocated_bytes() == before


def test_f_dupfd_at_2_31_is_einval() -> None:
    # Fixed: F_DUPFD ignored RLIMIT_NOFILE (f_dupfd refuses from >= the limit).
    host = SimHost()
    mfd = host.memfd_create("m", 0)
    with pytest.raises(OSError) as e:
        host.fcntl(mfd, L.F_DUPFD, 1 << 31)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("which", ["create_vm", "create_vcpu", "run"])
def test_int_ioctl_given_a_buffer_sees_its_address(which: str) -> None:
    # Fixed: a buffer argument read as 0; LinuxHost passes its address, which these refuse.
    host = SimHost()
    kfd = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
    buf = bytearray(8)
    with pytest.raises(OSError) as e:
        if which == "create_vm":
            host.ioctl(kfd, K.KVM_CREATE_VM, buf)
        elif which == "create_vcpu":
            host.ioctl(host.ioctl(kfd, K.KVM_CREATE_VM, 0), K.KVM_CREATE_VCPU, buf)
        else:
            vcpu = host.ioctl(host.ioctl(kfd, K.KVM_CREATE_VM, 0), K.KVM_CREATE_VCPU, 0)
            host.ioctl(vcpu, K.KVM_RUN, buf)
    assert e.value.errno == errno.EINVAL


def test_mmap_negative_offset_is_eoverflow() -> None:
    # Fixed: mmap once accepted a negative offset (the kernel's pgoff is unsigned, file_mmap_ok
    # refuses it with EOVERFLOW) and faulting it leaked page cache at negative offsets.
    host = SimHost()
    mfd = host.memfd_create("m", 0)
    host.ftruncate(mfd, 0x10000)
    with pytest.raises(OSError) as e:
        addr = host.mmap(0, 0x20000, L.PROT_READ, L.MAP_SHARED, mfd, -0x10000)
        host.peek(addr, 1)  # populates file offset -0x10000
    host.exit()
    assert host.leaks() == []
    assert e.value.errno == errno.EOVERFLOW


def fill_fd_table(host: SimHost, fd: int) -> list[int]:
    """Dup ``fd`` until no fd is left below RLIMIT_NOFILE."""
    dups = []
    while True:
        try:
            dups.append(host.fcntl(fd, L.F_DUPFD_CLOEXEC, 0))
        except OSError as e:
            assert e.errno == errno.EMFILE
            return dups


def test_create_vcpu_emfile_leaves_the_id_free() -> None:
    # Fixed: a vCPU whose fd could not be installed (EMFILE) once stayed in kvm.vcpus; the
    # kernel erases it again (kvm_put_xa_erase), so the id is free.
    host = SimHost()
    vm = vm_of(host)
    dups = fill_fd_table(host, vm)
    with pytest.raises(OSError) as e:
        host.ioctl(vm, K.KVM_CREATE_VCPU, 0)
    assert e.value.errno == errno.EMFILE
    host.close(dups[-1])
    assert host.ioctl(vm, K.KVM_CREATE_VCPU, 0) >= 0  # the model: EEXIST
