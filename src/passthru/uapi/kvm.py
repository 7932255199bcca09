"""ctypes mirror of include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h (x86-64).

Names, layouts and request numbers are the kernel's; tests/uapi compares them with the C
headers (Debian linux-libc-dev 7.3). Only the parts KERNEL.md names are mirrored, plus the
x86 register structs a VMM needs to start a vCPU (kvm_regs, kvm_sregs).

``struct kvm_run`` is the page a vCPU fd mmaps at offset 0 (its real length is
KVM_GET_VCPU_MMAP_SIZE, larger than the struct). Its exit union is anonymous in C; here it
is ``_kvm_run_exit`` under ``_anonymous_``, so ``run.io``, ``run.mmio`` and
``run.memory_fault`` read as in C. Only the exit members KERNEL.md uses (and the generic
ones around them) are spelled out; ``padding`` fixes the union at the kernel's 256 bytes.
The sync-regs union ``s`` is mirrored as its 2048-byte padding only.
"""

from __future__ import annotations

import ctypes

from .ioctl import _IO, _IOR, _IOW, _IOWR, Struct, Union

# Kernel type names, kept for readers; the class bodies below use the single-underscore
# spellings because a ``__name`` inside a class body is name-mangled by Python.
__u8 = ctypes.c_uint8
__u16 = ctypes.c_uint16
__u32 = ctypes.c_uint32
__u64 = ctypes.c_uint64
__s32 = ctypes.c_int32

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64
_s64 = ctypes.c_int64

KVMIO = 0xAE
KVM_API_VERSION = 12

# VM types (arch/x86/include/uapi/asm/kvm.h)
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_X86_SEV_VM = 2
KVM_X86_SEV_ES_VM = 3
KVM_X86_SNP_VM = 4
KVM_X86_TDX_VM = 5

KVM_NR_INTERRUPTS = 256  # asm/kvm.h
# pages into a vCPU fd's mapping, after the kvm_run page (asm/kvm.h)
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2

# memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# capabilities
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SYNC_MMU = 16
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244

# exit reasons (kvm_run.exit_reason)
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_TDX = 40

# kvm_run.io.direction
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# kvm_run.internal.suberror
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

# kvm_run.system_event.type
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3

# kvm_run.memory_fault.flags
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1


class kvm_userspace_memory_region(Struct):
    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
    ]


class kvm_userspace_memory_region2(Struct):
    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
        ("guest_memfd_offset", _u64),
        ("guest_memfd", _u32),
        ("pad1", _u32),
        ("pad2", _u64 * 14),
    ]


class kvm_memory_attributes(Struct):
    _fields_ = [
        ("address", _u64),
        ("size", _u64),
        ("attributes", _u64),
        ("flags", _u64),
    ]


class kvm_create_guest_memfd(Struct):
    _fields_ = [
        ("size", _u64),
        ("flags", _u64),
        ("reserved", _u64 * 6),
    ]


class kvm_pre_fault_memory(Struct):
    _fields_ = [
        ("gpa", _u64),
        ("size", _u64),
        ("flags", _u64),
        ("padding", _u64 * 5),
    ]


class kvm_enable_cap(Struct):
    _fields_ = [
        ("cap", _u32),
        ("flags", _u32),
        ("args", _u64 * 4),
        ("pad", _u8 * 64),
    ]


# --- x86 register state (arch/x86/include/uapi/asm/kvm.h) ---


class kvm_regs(Struct):
    _fields_ = [
        (name, _u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(Struct):
    _fields_ = [
        ("base", _u64),
        ("limit", _u32),
        ("selector", _u16),
        ("type", _u8),
        ("present", _u8),
        ("dpl", _u8),
        ("db", _u8),
        ("s", _u8),
        ("l", _u8),
        ("g", _u8),
        ("avl", _u8),
        ("unusable", _u8),
        ("padding", _u8),
    ]


class kvm_dtable(Struct):
    _fields_ = [
        ("base", _u64),
        ("limit", _u16),
        ("padding", _u16 * 3),
    ]


class kvm_sregs(Struct):
    _fields_ = [
        *((seg, kvm_segment) for seg in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((reg, _u64) for reg in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("interrupt_bitmap", _u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_debug_exit_arch(Struct):
    _fields_ = [
        ("exception", _u32),
        ("pad", _u32),
        ("pc", _u64),
        ("dr6", _u64),
        ("dr7", _u64),
    ]


# --- struct kvm_run: its anonymous exit union and the untagged structs inside it ---


class _kvm_run_hw(Struct):
    _fields_ = [("hardware_exit_reason", _u64)]


class _kvm_run_fail_entry(Struct):
    _fields_ = [("hardware_entry_failure_reason", _u64), ("cpu", _u32)]


class _kvm_run_ex(Struct):
    _fields_ = [("exception", _u32), ("error_code", _u32)]


class _kvm_run_io(Struct):
    _fields_ = [
        ("direction", _u8),
        ("size", _u8),  # bytes
        ("port", _u16),
        ("count", _u32),
        ("data_offset", _u64),  # relative to the start of kvm_run
    ]


class _kvm_run_debug(Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _kvm_run_mmio(Struct):
    _fields_ = [
        ("phys_addr", _u64),
        ("data", _u8 * 8),
        ("len", _u32),
        ("is_write", _u8),
    ]


class _kvm_run_internal(Struct):
    _fields_ = [("suberror", _u32), ("ndata", _u32), ("data", _u64 * 16)]


class _kvm_run_system_event(Struct):
    _fields_ = [("type", _u32), ("ndata", _u32), ("data", _u64 * 16)]


class _kvm_run_memory_fault(Struct):
    _fields_ = [("flags", _u64), ("gpa", _u64), ("size", _u64)]


class _kvm_run_exit(Union):
    _fields_ = [
        ("hw", _kvm_run_hw),
        ("fail_entry", _kvm_run_fail_entry),
        ("ex", _kvm_run_ex),
        ("io", _kvm_run_io),
        ("debug", _kvm_run_debug),
        ("mmio", _kvm_run_mmio),
        ("internal", _kvm_run_internal),
        ("system_event", _kvm_run_system_event),
        ("memory_fault", _kvm_run_memory_fault),
        ("padding", ctypes.c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class _kvm_run_s(Union):
    _fields_ = [("padding", ctypes.c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(Struct):
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", _u8),
        ("immediate_exit", _u8),
        ("padding1", _u8 * 6),
        ("exit_reason", _u32),
        ("ready_for_interrupt_injection", _u8),
        ("if_flag", _u8),
        ("flags", _u16),
        ("cr8", _u64),
        ("apic_base", _u64),
        ("u", _kvm_run_exit),
        ("kvm_valid_regs", _u64),
        ("kvm_dirty_regs", _u64),
        ("s", _kvm_run_s),
    ]


# --- ioctls ---

# system (/dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)

# VM
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, _u64)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xD2, kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, kvm_create_guest_memfd)

# vCPU
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xD5, kvm_pre_fault_memory)
