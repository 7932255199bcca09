"""/dev/kvm and VM-fd basics (KERNEL.md §5, §9): API version, capabilities, VM types, vCPUs,
and which errno an ioctl gets on the wrong kind of fd."""

from __future__ import annotations

import errno

import pytest

from passthru.uapi import kvm
from passthru.uapi import linux as L

from ._kvm import create_vm, open_kvm

pytestmark = pytest.mark.node("/dev/kvm")

UNKNOWN_KVM_IOCTL = 0xAE7F  # _IO(KVMIO, 0x7f): no such KVM ioctl
TCGETS = 0x5401  # a tty ioctl: not KVM's


def test_api_version_is_12(host):
    assert host.ioctl(open_kvm(host), kvm.KVM_GET_API_VERSION, 0) == 12


CAPS = [
    (kvm.KVM_CAP_USER_MEMORY, 1),
    (kvm.KVM_CAP_USER_MEMORY2, 1),
    (kvm.KVM_CAP_GUEST_MEMFD, 1),
    (kvm.KVM_CAP_GUEST_MEMFD_FLAGS, kvm.GUEST_MEMFD_FLAG_MMAP | kvm.GUEST_MEMFD_FLAG_INIT_SHARED),
    (kvm.KVM_CAP_VM_TYPES, 1 << kvm.KVM_X86_DEFAULT_VM),
    (kvm.KVM_CAP_MEMORY_ATTRIBUTES, 0),
    (kvm.KVM_CAP_PRE_FAULT_MEMORY, 0),
    (kvm.KVM_CAP_NR_MEMSLOTS, 32764),
    (kvm.KVM_CAP_MEMORY_FAULT_INFO, 1),
    (kvm.KVM_CAP_READONLY_MEM, 1),
    (kvm.KVM_CAP_MAX_VCPUS, 1024),
    (9999, 0),  # unknown capability: 0, not an error
]


@pytest.mark.parametrize("on", ["system", "vm"])
@pytest.mark.parametrize(("cap", "value"), CAPS, ids=[str(c) for c, _ in CAPS])
def test_check_extension(host, on, cap, value):
    kfd = open_kvm(host)
    fd = kfd if on == "system" else create_vm(host, kfd)
    assert host.ioctl(fd, kvm.KVM_CHECK_EXTENSION, cap) == value


def test_create_default_vm_returns_fd(host):
    kfd = open_kvm(host)
    vm = create_vm(host, kfd, kvm.KVM_X86_DEFAULT_VM)
    assert vm >= 0 and vm != kfd


@pytest.mark.parametrize(
    "vm_type",
    [
        kvm.KVM_X86_SW_PROTECTED_VM,
        kvm.KVM_X86_SEV_VM,
        kvm.KVM_X86_SEV_ES_VM,
        kvm.KVM_X86_SNP_VM,
        kvm.KVM_X86_TDX_VM,
        99,
    ],
)
def test_create_vm_unsupported_type_einval(host, vm_type):
    with pytest.raises(OSError) as e:
        create_vm(host, open_kvm(host), vm_type)
    assert e.value.errno == errno.EINVAL


def test_unknown_ioctl_on_dev_kvm_einval(host):
    # kvm_dev_ioctl falls through to kvm_arch_dev_ioctl, whose default is EINVAL, not ENOTTY
    kfd = open_kvm(host)
    for request in (UNKNOWN_KVM_IOCTL, TCGETS, kvm.KVM_CREATE_VCPU, kvm.KVM_SET_MEMORY_ATTRIBUTES):
        with pytest.raises(OSError) as e:
            host.ioctl(kfd, request, 0)
        assert e.value.errno == errno.EINVAL, hex(request)


def test_unknown_ioctl_on_vm_fd_enotty(host):
    vm = create_vm(host, open_kvm(host))
    for request in (UNKNOWN_KVM_IOCTL, TCGETS):
        with pytest.raises(OSError) as e:
            host.ioctl(vm, request, 0)
        assert e.value.errno == errno.ENOTTY, hex(request)


@pytest.mark.parametrize(
    "request_",
    [kvm.KVM_GET_API_VERSION, kvm.KVM_CREATE_VM, kvm.KVM_GET_VCPU_MMAP_SIZE],
    ids=["GET_API_VERSION", "CREATE_VM", "GET_VCPU_MMAP_SIZE"],
)
def test_system_ioctl_on_vm_fd_enotty(host, request_):
    vm = create_vm(host, open_kvm(host))
    with pytest.raises(OSError) as e:
        host.ioctl(vm, request_, 0)
    assert e.value.errno == errno.ENOTTY


def test_kvm_ioctl_on_memfd_enotty(host):
    fd = host.memfd_create("not-kvm", 0)
    with pytest.raises(OSError) as e:
        host.ioctl(fd, kvm.KVM_GET_API_VERSION, 0)
    assert e.value.errno == errno.ENOTTY


def test_ioctl_on_closed_fd_ebadf(host):
    fd = open_kvm(host)
    host.close(fd)
    with pytest.raises(OSError) as e:
        host.ioctl(fd, kvm.KVM_GET_API_VERSION, 0)
    assert e.value.errno == errno.EBADF


def test_close_twice_ebadf(host):
    fd = open_kvm(host)
    host.close(fd)
    with pytest.raises(OSError) as e:
        host.close(fd)
    assert e.value.errno == errno.EBADF


def test_vcpu_mmap_size_is_three_pages(host):
    assert host.ioctl(open_kvm(host), kvm.KVM_GET_VCPU_MMAP_SIZE, 0) == 3 * L.PAGE_SIZE


def test_create_vcpu(host):
    vm = create_vm(host, open_kvm(host))
    a = host.ioctl(vm, kvm.KVM_CREATE_VCPU, 0)
    b = host.ioctl(vm, kvm.KVM_CREATE_VCPU, 1)
    assert a >= 0 and b >= 0 and a != b


def test_create_vcpu_same_id_eexist(host):
    vm = create_vm(host, open_kvm(host))
    host.ioctl(vm, kvm.KVM_CREATE_VCPU, 0)
    with pytest.raises(OSError) as e:
        host.ioctl(vm, kvm.KVM_CREATE_VCPU, 0)
    assert e.value.errno == errno.EEXIST


@pytest.mark.parametrize("vcpu_id", [4096, 5000, -1])
def test_create_vcpu_id_out_of_range_einval(host, vcpu_id):
    # ids must be below KVM_MAX_VCPU_IDS (4096 on x86-64 here)
    vm = create_vm(host, open_kvm(host))
    with pytest.raises(OSError) as e:
        host.ioctl(vm, kvm.KVM_CREATE_VCPU, vcpu_id)
    assert e.value.errno == errno.EINVAL


def test_set_memory_attributes_enotty_on_default_vm(host):
    vm = create_vm(host, open_kvm(host))
    arg = kvm.kvm_memory_attributes(
        address=0, size=L.PAGE_SIZE, attributes=kvm.KVM_MEMORY_ATTRIBUTE_PRIVATE
    )
    with pytest.raises(OSError) as e:
        host.ioctl(vm, kvm.KVM_SET_MEMORY_ATTRIBUTES, arg)
    assert e.value.errno == errno.ENOTTY


@pytest.mark.parametrize(
    "request_",
    [kvm.KVM_SET_USER_MEMORY_REGION2, kvm.KVM_CREATE_GUEST_MEMFD],
    ids=["SET_USER_MEMORY_REGION2", "CREATE_GUEST_MEMFD"],
)
def test_null_struct_argument_efault(host, request_):
    vm = create_vm(host, open_kvm(host))
    with pytest.raises(OSError) as e:
        host.ioctl(vm, request_, None)
    assert e.value.errno == errno.EFAULT
