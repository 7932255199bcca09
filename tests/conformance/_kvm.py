"""Small wrappers over the KVM uAPI for the conformance tests (plain Host calls, no logic)."""

from __future__ import annotations

from typing import Any

from passthru.uapi import kvm
from passthru.uapi import linux as L


def open_kvm(host: Any) -> int:
    return int(host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC))


def create_vm(host: Any, kvm_fd: int, vm_type: int = 0) -> int:
    return int(host.ioctl(kvm_fd, kvm.KVM_CREATE_VM, vm_type))


def create_gmem(host: Any, vm: int, size: int, flags: int = 0, reserved0: int = 0) -> int:
    arg = kvm.kvm_create_guest_memfd(size=size, flags=flags)
    arg.reserved[0] = reserved0
    return int(host.ioctl(vm, kvm.KVM_CREATE_GUEST_MEMFD, arg))


def set_region2(
    host: Any,
    vm: int,
    slot: int,
    gpa: int,
    size: int,
    gmem: int = 0,
    offset: int = 0,
    flags: int = kvm.KVM_MEM_GUEST_MEMFD,
    uaddr: int = 0,
    pad1: int = 0,
    pad2_0: int = 0,
) -> int:
    arg = kvm.kvm_userspace_memory_region2(
        slot=slot,
        flags=flags,
        guest_phys_addr=gpa,
        memory_size=size,
        userspace_addr=uaddr,
        guest_memfd_offset=offset,
        guest_memfd=gmem & 0xFFFFFFFF,
        pad1=pad1,
    )
    arg.pad2[0] = pad2_0
    return int(host.ioctl(vm, kvm.KVM_SET_USER_MEMORY_REGION2, arg))


def set_region1(
    host: Any, vm: int, slot: int, gpa: int, size: int, uaddr: int, flags: int = 0
) -> int:
    arg = kvm.kvm_userspace_memory_region(
        slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=uaddr
    )
    return int(host.ioctl(vm, kvm.KVM_SET_USER_MEMORY_REGION, arg))
