"""ctypes mirror of include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (x86-64).

Names, layouts and request numbers are the kernel's; tests/uapi compares them with the C
headers. Only the parts KERNEL.md names are mirrored.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, _IOW, _IOWR

__u8 = ctypes.c_uint8
__u16 = ctypes.c_uint16
__u32 = ctypes.c_uint32
__u64 = ctypes.c_uint64
__s32 = ctypes.c_int32

KVMIO = 0xAE
KVM_API_VERSION = 12

# VM types (arch/x86/include/uapi/asm/kvm.h)
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_X86_SEV_VM = 2
KVM_X86_SEV_ES_VM = 3
KVM_X86_SNP_VM = 4
KVM_X86_TDX_VM = 5

# memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# capabilities
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_READONLY_MEM = 81
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244

# exit reasons
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_MEMORY_FAULT = 39
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", __u32),
        ("flags", __u32),
        ("guest_phys_addr", __u64),
        ("memory_size", __u64),
        ("userspace_addr", __u64),
    ]


class kvm_userspace_memory_region2(ctypes.Structure):
    _fields_ = [
        ("slot", __u32),
        ("flags", __u32),
        ("guest_phys_addr", __u64),
        ("memory_size", __u64),
        ("userspace_addr", __u64),
        ("guest_memfd_offset", __u64),
        ("guest_memfd", __u32),
        ("pad1", __u32),
        ("pad2", __u64 * 14),
    ]


class kvm_memory_attributes(ctypes.Structure):
    _fields_ = [
        ("address", __u64),
        ("size", __u64),
        ("attributes", __u64),
        ("flags", __u64),
    ]


class kvm_create_guest_memfd(ctypes.Structure):
    _fields_ = [
        ("size", __u64),
        ("flags", __u64),
        ("reserved", __u64 * 6),
    ]


KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xD2, kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, kvm_create_guest_memfd)
