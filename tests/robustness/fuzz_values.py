"""The fuzzer's values and its observation of state (test_syscall_fuzz.py uses them): each
Field's sane and garbage values, random structs, the snapshot a failed call must leave
unchanged, and the partial state the real kernel itself leaves behind (``excused``)."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from passthru import SimHost
from passthru.kernel.fs.process import RLIMIT_NOFILE
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = L.PAGE_SIZE


def fuzz_settings(default_examples: int) -> settings:
    """Both state-machine fuzzers' settings: derandomized, no database (a CI run is
    reproducible), ``default_examples`` examples unless PASSTHRU_FUZZ_EXAMPLES says more."""
    return settings(
        max_examples=int(os.environ.get("PASSTHRU_FUZZ_EXAMPLES", str(default_examples))),
        stateful_step_count=40,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )
RESET_VECTOR_GPA = 0xFFFF0000  # CS base at reset: a slot here lets KVM_RUN execute guest code

# Known model bugs, each with an xfail(strict=True) reproducer in test_model_bugs.py. While one
# is open the fuzzer tolerates exactly its symptom; when it is fixed, delete its entry here.
KNOWN_BUGS: set[str] = set()  # none open: every bug the fuzzer found is fixed

# ---------------------------------------------------------------------------------------------
# Values, all in one place. Each Field has *sane* values (what a correct VMM passes, so calls
# succeed and state grows) and *garbage*. Every value fits the C type LinuxHost passes it as,
# so each call is a legal, if silly, call on the real kernel too.
# ---------------------------------------------------------------------------------------------

U64_EDGES = [
    0, 1, 8, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 0x10000, 1 << 20, 1 << 21, 1 << 30,
    (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 47) - PAGE, 1 << 47, 1 << 52,
    (1 << 63) - PAGE, (1 << 63) - 1, 1 << 63, (1 << 64) - PAGE, (1 << 64) - 1,
]
S64_EDGES = [x for x in U64_EDGES if x < 1 << 63] + [-1, -PAGE, -(1 << 31), -(1 << 63)]
U32_EDGES = [0, 1, 0xFFFF, 1 << 16, 1 << 31, (1 << 32) - 1]
S32_EDGES = [0, 1, -1, (1 << 31) - 1, -(1 << 31)]

u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, (1 << 64) - 1))
s64 = st.one_of(st.sampled_from(S64_EDGES), st.integers(-(1 << 63), (1 << 63) - 1))
u32 = st.one_of(st.sampled_from(U32_EDGES), st.integers(0, (1 << 32) - 1))
s32 = st.one_of(st.sampled_from(S32_EDGES), st.integers(-(1 << 31), (1 << 31) - 1))
misaligned = st.integers(1, 16 * PAGE).filter(lambda x: x % PAGE)
# fds that are not open: stdio (absent in the model), never opened, negative, huge
bad_fd = st.sampled_from([0, 1, 2, 999, 4096, -1, -2, -(1 << 31), (1 << 31) - 1])
pages = st.integers(1, 16).map(lambda n: n * PAGE)
page_offset = st.one_of(st.just(0), st.integers(0, 15).map(lambda n: n * PAGE))
# sizes the address space takes but RAM (63 GiB) cannot back: allocation fails part way
beyond_ram = st.sampled_from([64 << 30, 1 << 40, 1 << 46])


def flag_subsets(*flags: int) -> st.SearchStrategy[int]:
    return st.lists(st.sampled_from(flags), unique=True).map(lambda xs: sum(xs, 0))


def with_junk(sane: st.SearchStrategy[int], *junk: int) -> st.SearchStrategy[int]:
    """Sane flags with unknown bits or'ed in."""
    return st.tuples(sane, st.sampled_from(junk) | u32).map(lambda t: t[0] | t[1])


class Field:
    """The values one argument takes: ``sane`` ones, and ``garbage`` mixed in otherwise."""

    def __init__(self, sane: st.SearchStrategy[Any], *garbage: st.SearchStrategy[Any]) -> None:
        self.sane = sane
        self.wild = st.one_of(sane, *garbage)


# Negative values where the C type is unsigned (what a caller's arithmetic slip passes: the
# register holds the wrapped value), and loff_t values past LLONG_MAX (negative in the register;
# SimHost takes them as the kernel would, LinuxHost's os.pread refuses them before the call).
negative = st.sampled_from([-1, -PAGE, -(1 << 44), -(1 << 63)])
past_llong = st.sampled_from([(1 << 63) - 2, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
SIZE = Field(pages, st.just(0), misaligned, beyond_ram, u64)
LENGTH = Field(pages, st.just(0), misaligned, beyond_ram, u64, negative)  # size_t
SLENGTH = Field(pages, st.just(0), misaligned, beyond_ram, s64, past_llong)  # off_t
OFFSET = Field(page_offset, misaligned, beyond_ram, u64)
SOFFSET = Field(page_offset, misaligned, beyond_ram, s64, past_llong)
GPA = Field(st.one_of(page_offset, st.sampled_from([RESET_VECTOR_GPA, RESET_VECTOR_GPA + 0xF000,
                                               0x100000])), misaligned, u64)
SLOT = Field(st.integers(0, 7), u32, st.sampled_from([1 << 16, (1 << 16) | 1]))  # as_id 1
GMEM_FLAGS = Field(flag_subsets(K.GUEST_MEMFD_FLAG_MMAP, K.GUEST_MEMFD_FLAG_INIT_SHARED),
                   with_junk(st.just(0), 1 << 2, 1 << 63, (1 << 64) - 1))
SLOT_FLAGS = Field(
    st.sampled_from([0, K.KVM_MEM_GUEST_MEMFD, K.KVM_MEM_READONLY, K.KVM_MEM_LOG_DIRTY_PAGES]),
    flag_subsets(K.KVM_MEM_LOG_DIRTY_PAGES, K.KVM_MEM_READONLY, K.KVM_MEM_GUEST_MEMFD),
    with_junk(st.just(K.KVM_MEM_GUEST_MEMFD), 1 << 3, 1 << 31),
)
RESERVED = Field(st.just(0), u64)  # padding and reserved fields: the kernel may not check them
VM_TYPE = Field(st.sampled_from([K.KVM_X86_DEFAULT_VM, K.KVM_X86_SW_PROTECTED_VM]),
                st.sampled_from([K.KVM_X86_SNP_VM, K.KVM_X86_TDX_VM, 31, 32, 64]), u64)
CAP = Field(st.sampled_from([
    K.KVM_CAP_USER_MEMORY, K.KVM_CAP_USER_MEMORY2, K.KVM_CAP_NR_MEMSLOTS, K.KVM_CAP_NR_VCPUS,
    K.KVM_CAP_MAX_VCPUS, K.KVM_CAP_READONLY_MEM, K.KVM_CAP_GUEST_MEMFD,
    K.KVM_CAP_GUEST_MEMFD_FLAGS, K.KVM_CAP_VM_TYPES, K.KVM_CAP_MEMORY_ATTRIBUTES,
    K.KVM_CAP_PRE_FAULT_MEMORY, K.KVM_CAP_MEMORY_FAULT_INFO,
]), u64)
VCPU_ID = Field(st.integers(0, 3), st.sampled_from([4095, 4096]), u64)
ATTRS = Field(st.sampled_from([0, K.KVM_MEMORY_ATTRIBUTE_PRIVATE]), u64)
MFD_FLAGS = Field(
    flag_subsets(L.MFD_CLOEXEC, L.MFD_ALLOW_SEALING, L.MFD_NOEXEC_SEAL),
    flag_subsets(L.MFD_CLOEXEC, L.MFD_ALLOW_SEALING, L.MFD_HUGETLB, L.MFD_NOEXEC_SEAL,
                 L.MFD_EXEC),
    with_junk(st.just(0), 0x40, 21 << 26, 1 << 31),
)
MFD_NAME = Field(
    st.just("guest-ram"), st.text(max_size=300),
    # names with no byte encoding (lone surrogates), surrogate-escaped bytes, NULs, and the
    # MFD_NAME_MAX edge in multi-byte characters
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4),
    st.sampled_from(["\udc80\udcff", "a\x00b", "\x00", "é" * 124, "é" * 125, "x" * 249]),
)
SEALS = Field(
    flag_subsets(L.F_SEAL_SEAL, L.F_SEAL_SHRINK, L.F_SEAL_GROW, L.F_SEAL_WRITE,
                 L.F_SEAL_FUTURE_WRITE, L.F_SEAL_EXEC),
    with_junk(st.just(0), 0x40, 1 << 31),
)
PROT = Field(st.sampled_from([L.PROT_READ, L.PROT_READ | L.PROT_WRITE]),
             flag_subsets(L.PROT_READ, L.PROT_WRITE, L.PROT_EXEC), with_junk(st.just(0), 8))
MAP_FLAGS = Field(
    st.sampled_from([L.MAP_SHARED, L.MAP_PRIVATE]),
    st.tuples(st.sampled_from([L.MAP_SHARED, L.MAP_PRIVATE, L.MAP_SHARED_VALIDATE, 0, 0xF]),
              flag_subsets(L.MAP_FIXED, L.MAP_ANONYMOUS, L.MAP_FIXED_NOREPLACE,
                           L.MAP_NORESERVE)).map(lambda t: t[0] | t[1]),
    s32,
)
FALLOC_MODE = Field(
    st.sampled_from([0, L.FALLOC_FL_KEEP_SIZE, L.FALLOC_FL_KEEP_SIZE | L.FALLOC_FL_PUNCH_HOLE]),
    st.sampled_from([L.FALLOC_FL_PUNCH_HOLE, L.FALLOC_FL_ZERO_RANGE, L.FALLOC_FL_COLLAPSE_RANGE,
                     L.FALLOC_FL_INSERT_RANGE]),
    s32,
)
FCNTL_CMD = Field(
    st.sampled_from([L.F_GETFD, L.F_SETFD, L.F_GETFL, L.F_DUPFD, L.F_DUPFD_CLOEXEC,
                     L.F_GET_SEALS]),
    st.sampled_from([L.F_SETFL, L.F_ADD_SEALS]), s32,
)
FCNTL_ARG = Field(st.integers(0, 64), SEALS.wild, st.just(L.FD_CLOEXEC),
                  st.integers(RLIMIT_NOFILE - 8, RLIMIT_NOFILE + 8), u64)
OPEN_PATH = Field(st.sampled_from(["/dev/kvm", "/dev/null"]),
                  st.sampled_from(["/dev/nope", "", "/dev/kvm/x"]))
OPEN_FLAGS = Field(st.sampled_from([L.O_RDWR | L.O_CLOEXEC, L.O_RDWR]),
                   st.sampled_from([L.O_RDONLY, L.O_WRONLY, L.O_ACCMODE]), s32)
RW_COUNT = Field(st.integers(0, 3 * PAGE), st.sampled_from([-1, 1 << 63, (1 << 64) - 1]))
PAYLOAD = Field(st.binary(max_size=2 * PAGE))
# Guest code for the reset vector: hlt; and "mov [0x8000],al; out 0x10,al; hlt" (KERNEL.md §9)
GUEST_CODE = [b"\xf4", b"\xa2\x00\x80\xe6\x10\xf4"]
POKE = Field(st.one_of(st.binary(max_size=64), st.sampled_from(GUEST_CODE)),
             st.binary(max_size=2 * PAGE))
PEEK = Field(st.integers(0, 64), st.integers(0, 3 * PAGE))
# The deep state a run starts from (SyscallFuzz.prebuild): None, or VM type, guest_memfd flags,
# guest code, a private page (the data page 0x8000, the code page, or none), whether a slot
# backs GPA 0, and how many KVM_RUNs. A flat list, so every combination is equally likely.
PREBUILD = st.sampled_from([None] * 8 + list(itertools.product(
    [K.KVM_X86_DEFAULT_VM, K.KVM_X86_SW_PROTECTED_VM],
    [0, K.GUEST_MEMFD_FLAG_MMAP, K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED],
    GUEST_CODE, [None, 0x8000, RESET_VECTOR_GPA + 0xF000], [True, False], [0, 1, 2],
)))
KNOWN_REQUESTS = [
    K.KVM_GET_API_VERSION, K.KVM_CREATE_VM, K.KVM_CHECK_EXTENSION, K.KVM_GET_VCPU_MMAP_SIZE,
    K.KVM_CREATE_VCPU, K.KVM_SET_USER_MEMORY_REGION, K.KVM_SET_USER_MEMORY_REGION2,
    K.KVM_SET_TSS_ADDR, K.KVM_SET_IDENTITY_MAP_ADDR, K.KVM_ENABLE_CAP,
    K.KVM_SET_MEMORY_ATTRIBUTES, K.KVM_CREATE_GUEST_MEMFD, K.KVM_PRE_FAULT_MEMORY, K.KVM_RUN,
    K.KVM_GET_REGS, K.KVM_SET_REGS, K.KVM_GET_SREGS, K.KVM_SET_SREGS,
    0x5401,  # TCGETS: a tty ioctl
    0x541B,  # FIONREAD
    0xAE7F,  # _IO(KVMIO, 0x7f): no such KVM ioctl
]
REQUEST = Field(
    st.sampled_from(KNOWN_REQUESTS),
    u32,  # unknown numbers, other type/size/direction bits
    st.sampled_from(KNOWN_REQUESTS).map(lambda r: r | 1 << 32),  # the kernel's cmd is 32-bit
)
STRUCTS = [
    K.kvm_userspace_memory_region, K.kvm_userspace_memory_region2, K.kvm_create_guest_memfd,
    K.kvm_memory_attributes, K.kvm_pre_fault_memory, K.kvm_enable_cap, K.kvm_regs,
    K.kvm_sregs,
]


@st.composite
def random_struct(draw: Any) -> ctypes.Structure:
    ctype = draw(st.sampled_from(STRUCTS))
    raw = draw(st.binary(min_size=ctypes.sizeof(ctype), max_size=ctypes.sizeof(ctype)))
    return ctype.from_buffer_copy(raw)


# ---------------------------------------------------------------------------------------------
# Observable state: what a failed call must leave as it was.
# ---------------------------------------------------------------------------------------------


def snapshot(host: SimHost) -> dict[str, Any]:
    """The fd table, live objects, RAM, pins, VMAs, memslots, vCPUs, memory attributes,
    gmem bindings, and per file: its reference count, seals, size and file position.

    Objects (files, slots) are compared by identity: ``File`` and ``Memslot`` have no __eq__.
    """
    proc, kernel = host.proc, host.kernel
    files: dict[int, Any] = {id(f): f for f in proc.fds.values()}
    files.update({id(v.file): v.file for v in proc.mm.vmas.values() if v.file is not None})
    kvms = {id(f.kvm): f.kvm for f in files.values() if getattr(f, "kvm", None) is not None}
    return {
        "fds": tuple(sorted(proc.fds.items(), key=lambda kv: kv[0])),
        "cloexec": frozenset(proc.cloexec),
        "live": dict(kernel.live),
        "ram": kernel.phys.allocated_bytes(),
        "pins": tuple(kernel.phys.pins),
        "vmas": tuple((v.start, v.end, v.vm_flags, v.file, v.pgoff)
                      for v in proc.mm.vmas.values()),
        "files": {
            k: (f, f.refcount, getattr(f, "seals", None), getattr(f, "i_size", None), f.f_pos,
                tuple(getattr(f, "bindings", ())))
            for k, f in files.items()
        },
        "memslots": {
            k: tuple((sid, s.base_gpa, s.npages, s.userspace_addr, s.flags, s.gmem, s.gmem_offset)
                     for sid, s in sorted(kvm.memslots.by_id.items()))
            for k, kvm in kvms.items()
        },
        "vcpus": {k: tuple(sorted(kvm.vcpus)) for k, kvm in kvms.items()},
        "attributes": {k: tuple(kvm.attributes) for k, kvm in kvms.items()},
        "gmem_files": {k: tuple(kvm.gmem_files) for k, kvm in kvms.items()},
    }


def assert_unchanged(before: dict[str, Any], after: dict[str, Any], call: str,
                     allowed: set[str]) -> None:
    """A failed call left no trace but the ``allowed`` keys; "ram" there means RAM may have
    grown (pages faulted in), never shrunk."""
    diff = [k for k in before if before[k] != after[k]]
    if "ram" in diff and "ram" in allowed and after["ram"] > before["ram"]:
        diff.remove("ram")
    diff = [k for k in diff if k == "ram" or k not in allowed]
    assert not diff, (
        f"failed call {call} changed state: "
        + "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in diff)
    )


def excused(method: str, args: tuple[Any, ...], host: SimHost, err: OSError) -> set[str]:
    """What a failed call may change, because the real kernel leaves it changed too:

    - RAM may grow (pages faulted in, never freed by the failure) after
      - peek/poke (a CPU access): the pages before the faulting one were faulted in;
      - an ioctl with an integer argument: copy_from_user/copy_to_user through a user pointer
        faults the pointed-to pages in before the ioctl's own checks can fail; KVM_RUN (an
        integer argument too) faults guest pages in before an exit or an EFAULT;
      - fallocate on a guest_memfd: kvm_gmem_allocate keeps the folios it allocated before an
        error (shmem_fallocate undoes them: memfd is *not* excused);
    - and whatever a known, still open model bug changes (KNOWN_BUGS).
    """
    if method in ("peek", "poke"):
        return {"ram"}
    if method == "ioctl":
        if ("vcpu-kept-after-emfile" in KNOWN_BUGS and args[1] == K.KVM_CREATE_VCPU
                and err.errno == errno.EMFILE):
            return {"ram", "vcpus"}
        return {"ram"} if isinstance(args[2], int) else set()
    if method == "fallocate":
        f = host.proc.fds.get(args[0])
        return {"ram"} if f is not None and f.kind == "guest_memfd" else set()
    return set()


