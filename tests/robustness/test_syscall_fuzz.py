"""Random syscall sequences against SimHost: valid calls that build deep state (VMs with
memslots, guest_memfd mapped, sealed memfds, vCPUs) mixed with garbage (bad fds, wrong struct
sizes, unknown requests and flag bits, huge lengths and offsets, misaligned values).

Properties, checked after every call:

1. only OSError or passthru.Fault escape a call (anything else propagates and fails the test);
   a Fault only from peek/poke — a real syscall returns EFAULT, it never raises a signal;
2. a call that fails with OSError changes nothing observable (see :func:`snapshot`), except
   where the real kernel itself leaves partial state (listed in :func:`excused`);
   a Fault from peek/poke may have faulted pages in, and changes nothing else;
3. the model records no violation (the calls are single-threaded and legal from userspace);
4. after host.exit(), host.leaks() is empty.

Runs under each profile of PROFILES (``-k linux-6.18`` picks one). PASSTHRU_FUZZ_EXAMPLES
raises the example count for a longer local run; CI uses the deterministic default.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from passthru import SimHost
from passthru.errors import Fault
from passthru.kernel.fs.process import RLIMIT_NOFILE
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PROFILES = ("linux-7.1", "linux-6.18")
PAGE = L.PAGE_SIZE
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


# ---------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------

FAILED = object()


class Args:
    """Draws one call's arguments: all sane (so that calls succeed and build state), or each
    argument sane or garbage."""

    def __init__(self, m: SyscallFuzz, data: st.DataObject) -> None:
        self.m = m
        self.data = data
        self.sane = data.draw(st.booleans(), label="sane")

    def __call__(self, field: Field) -> Any:
        return self.data.draw(field.sane if self.sane else field.wild)

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def fd(self, *kinds: str) -> int:
        """A live fd of one of ``kinds`` (of any kind if none is open); unless sane,
        sometimes a live fd of another kind, a closed one, or one that was never valid."""
        mine, live = self.m.fds(*kinds), self.m.fds()
        if mine and (self.sane or self.draw(st.integers(0, 2))):
            return self.draw(st.sampled_from(mine))
        if live and (self.sane or self.draw(st.booleans())):
            return self.draw(st.sampled_from(live))
        return self.draw(st.one_of(bad_fd, st.sampled_from(self.m.closed or [-1])))

    def addr(self) -> int:
        """Inside (or just past) a current mapping; unless sane, sometimes a stale or garbage
        address. Mappings of 64 KiB or more often get the reset vector's offset (0xfff0)."""
        vmas = list(self.m.host.proc.mm.vmas.values())
        if vmas and (self.sane or self.draw(st.integers(0, 3))):
            v = self.draw(st.sampled_from(vmas))
            span = v.end - v.start
            off = self.draw(st.one_of(st.integers(0, span - 1), st.integers(0, span + PAGE),
                                      st.just(0xFFF0 % span)))
            return v.start + off
        options: list[st.SearchStrategy[int]] = [u64]
        if self.m.stale_maps:
            options.append(st.sampled_from(self.m.stale_maps))
        return self.draw(st.one_of(*options))

    def page_addr(self) -> int:
        """A page-aligned address: a mapping's start or one of its pages, mostly."""
        vmas = list(self.m.host.proc.mm.vmas.values())
        if vmas and (self.sane or self.draw(st.integers(0, 2))):
            v = self.draw(st.sampled_from(vmas))
            return v.start + self.draw(st.integers(0, (v.end - v.start) // PAGE - 1)) * PAGE * (
                self.draw(st.integers(0, 1)))
        return self.draw(st.one_of(st.just(0), misaligned, u64))

    def arg(self, obj: ctypes.Structure) -> Any:
        """``obj`` as the ioctl argument; unless sane, sometimes its bytes cut short or padded
        with junk, or a user pointer to wherever."""
        if self.sane:
            return obj
        how = self.draw(st.sampled_from(["struct"] * 3 + ["short", "long", "empty", "pointer"]))
        raw = bytes(obj)
        if how == "short":
            return bytearray(raw[: self.draw(st.integers(0, len(raw) - 1))])
        if how == "long":
            return bytearray(raw + self.draw(st.binary(min_size=1, max_size=32)))
        if how == "empty":
            return bytearray()
        if how == "pointer":
            return self.addr()
        return obj

    def any_arg(self) -> Any:
        """Whatever for any ioctl: an integer (value or user pointer), a struct, a buffer."""
        kind = self.draw(st.sampled_from(["int", "pointer", "struct", "buffer", "none"]))
        if kind == "int":
            return self.draw(st.one_of(st.just(0), u64))
        if kind == "pointer":
            return self.addr()
        if kind == "struct":
            return self.draw(random_struct())
        if kind == "buffer":
            return self.draw(st.binary(max_size=80).map(bytearray))
        return None


class SyscallFuzz(RuleBasedStateMachine):
    PROFILE = "linux-7.1"

    def __init__(self) -> None:
        super().__init__()
        self.host = SimHost(profile=self.PROFILE)
        self.closed: list[int] = []  # fd numbers that were open once
        self.stale_maps: list[int] = []  # addresses mmap returned, possibly unmapped since

    # ----- calling the host ------------------------------------------------------------
    def call(self, method: str, *args: Any) -> Any:
        host = self.host
        before = snapshot(host)
        try:
            ret = getattr(host, method)(*args)
        except OSError as err:
            assert_unchanged(before, snapshot(host), f"{method}{args!r}",
                             excused(method, args, host, err))
            return FAILED
        except Fault:
            assert method in ("peek", "poke"), (
                f"{method}{args!r} raised a Fault: a syscall returns EFAULT, it does not "
                "deliver a signal")
            assert_unchanged(before, snapshot(host), f"{method}{args!r}", {"ram"})
            return FAILED
        if method == "munmap":  # do_vmi_munmap's range check, on the unsigned arguments
            addr, length = args[0] % (1 << 64), args[1] % (1 << 64)
            assert length and addr <= L.TASK_SIZE and length <= L.TASK_SIZE - addr, (
                f"munmap{args!r} succeeded outside the user address space")
        if method == "mmap":
            length = args[1] % (1 << 64)
            assert 0 < length <= L.TASK_SIZE and ret + length <= L.TASK_SIZE, (
                f"mmap{args!r} succeeded with a length or range the kernel refuses")
        if method in ("pread", "pwrite"):  # rw_verify_area on a loff_t position
            count = args[1] if method == "pread" else len(args[1])
            assert 0 <= args[2] and args[2] + count < 1 << 63, (
                f"{method} at {args[2]:#x} of {count:#x} bytes succeeded past LLONG_MAX")
        if method in ("read", "pread"):
            assert len(ret) <= min(args[1], 0x7FFFF000), f"{method}{args!r}: {len(ret)} bytes"
        if method == "close":
            self.closed.append(args[0])
        if method == "mmap":
            self.stale_maps.append(ret)
        return ret

    def fds(self, *kinds: str) -> list[int]:
        return [fd for fd, f in sorted(self.host.proc.fds.items()) if not kinds or f.kind in kinds]

    # ----- deep state quickly ----------------------------------------------------------
    @initialize(plan=PREBUILD)
    def prebuild(self, plan: tuple[int, int, bytes, int | None, bool, int] | None) -> None:
        """Most runs start with /dev/kvm, a VM, a guest_memfd bound to a slot at the reset
        vector (and mapped, when it may be), a memfd mapped as guest RAM backing the same slot
        (and maybe a second one at GPA 0), guest code at the reset vector, maybe a private
        page, a vCPU, and a KVM_RUN or two before other rules clobber the code."""
        if plan is None:
            return
        vmt, gflags, code, private, low_slot, runs = plan
        kfd = self.call("open", "/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
        vm = self.call("ioctl", kfd, K.KVM_CREATE_VM, vmt)
        if vm is FAILED:  # no SW_PROTECTED VMs on linux-6.18
            vm = self.call("ioctl", kfd, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)
        gm = self.call("ioctl", vm, K.KVM_CREATE_GUEST_MEMFD,
                       K.kvm_create_guest_memfd(size=0x10000, flags=gflags))
        if gm is FAILED:  # INIT_SHARED is for VMs without private memory only
            gm = self.call("ioctl", vm, K.KVM_CREATE_GUEST_MEMFD,
                           K.kvm_create_guest_memfd(size=0x10000, flags=0))
        if gflags & K.GUEST_MEMFD_FLAG_MMAP:
            gmap = self.call("mmap", 0, 0x10000, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, gm, 0)
            if gmap is not FAILED and gflags & K.GUEST_MEMFD_FLAG_INIT_SHARED:
                self.call("poke", gmap + 0xFFF0, code)
        mfd = self.call("memfd_create", "ram", L.MFD_ALLOW_SEALING)
        self.call("ftruncate", mfd, 0x10000)
        ram = self.call("mmap", 0, 0x10000, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, mfd, 0)
        self.call("poke", ram + 0xFFF0, code)
        self.call("ioctl", vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
            slot=0, flags=K.KVM_MEM_GUEST_MEMFD, guest_phys_addr=RESET_VECTOR_GPA,
            memory_size=0x10000, userspace_addr=ram, guest_memfd=gm))
        if low_slot:  # else the guest's store to 0x8000 is MMIO
            self.call("ioctl", vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
                slot=1, flags=0, guest_phys_addr=0, memory_size=0x10000, userspace_addr=ram))
        if private is not None:  # fails on a default VM
            self.call("ioctl", vm, K.KVM_SET_MEMORY_ATTRIBUTES, K.kvm_memory_attributes(
                address=private, size=PAGE, attributes=K.KVM_MEMORY_ATTRIBUTE_PRIVATE))
        vcpu = self.call("ioctl", vm, K.KVM_CREATE_VCPU, 0)
        for _ in range(runs):
            self.call("ioctl", vcpu, K.KVM_RUN, 0)

    # ----- generic fd syscalls ------------------------------------------------------------
    @rule(data=st.data())
    def open(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("open", a(OPEN_PATH), a(OPEN_FLAGS))

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        self.call("close", Args(self, data).fd())

    @rule(data=st.data())
    def fcntl(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("fcntl", a.fd(), a(FCNTL_CMD), a(FCNTL_ARG))

    @rule(data=st.data())
    def fill_fd_table(self, data: st.DataObject) -> None:
        """Dup one fd until at most a few fds are left below RLIMIT_NOFILE, so that the calls
        that make fds (open, memfd_create, KVM_CREATE_*) meet EMFILE."""
        a = Args(self, data)
        live = self.fds()
        if not live or len(live) > RLIMIT_NOFILE - 16:
            return
        fd = a.draw(st.sampled_from(live))
        for _ in range(RLIMIT_NOFILE - 3 - len(live) - a.draw(st.integers(0, 2))):
            self.host.fcntl(fd, L.F_DUPFD_CLOEXEC, 0)

    @rule(data=st.data())
    def random_ioctl(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ioctl", a.fd(), a(REQUEST), a.any_arg())

    # ----- /dev/kvm and the VM fd ---------------------------------------------------------
    @rule(data=st.data())
    def create_vm(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ioctl", a.fd("kvm-dev"), K.KVM_CREATE_VM, a(VM_TYPE))

    @rule(data=st.data())
    def check_extension(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ioctl", a.fd("kvm-dev", "kvm-vm"), K.KVM_CHECK_EXTENSION, a(CAP))

    @rule(data=st.data())
    def create_gmem(self, data: st.DataObject) -> None:
        a = Args(self, data)
        arg = K.kvm_create_guest_memfd(size=a(SIZE), flags=a(GMEM_FLAGS))
        arg.reserved[0] = a(RESERVED)
        self.call("ioctl", a.fd("kvm-vm"), K.KVM_CREATE_GUEST_MEMFD, a.arg(arg))

    @rule(data=st.data())
    def set_region2(self, data: st.DataObject) -> None:
        a = Args(self, data)
        arg = K.kvm_userspace_memory_region2(
            slot=a(SLOT), flags=a(SLOT_FLAGS), guest_phys_addr=a(GPA), memory_size=a(SIZE),
            userspace_addr=a.page_addr(), guest_memfd_offset=a(OFFSET),
            guest_memfd=a.fd("guest_memfd", "guest_memfd", "memfd") & 0xFFFFFFFF,
            pad1=a(RESERVED) & 0xFFFFFFFF)
        arg.pad2[0] = a(RESERVED)
        self.call("ioctl", a.fd("kvm-vm"), K.KVM_SET_USER_MEMORY_REGION2, a.arg(arg))

    @rule(data=st.data())
    def set_region1(self, data: st.DataObject) -> None:
        a = Args(self, data)
        arg = K.kvm_userspace_memory_region(
            slot=a(SLOT), flags=a(SLOT_FLAGS), guest_phys_addr=a(GPA), memory_size=a(SIZE),
            userspace_addr=a.page_addr())
        self.call("ioctl", a.fd("kvm-vm"), K.KVM_SET_USER_MEMORY_REGION, a.arg(arg))

    @rule(data=st.data())
    def delete_or_move_slot(self, data: st.DataObject) -> None:
        """An existing slot, deleted (size 0) or moved / re-flagged with its other fields."""
        vms = {id(f): (fd, f) for fd, f in sorted(self.host.proc.fds.items())
               if f.kind == "kvm-vm"}
        slots = [(fd, s) for fd, f in vms.values() for s in f.kvm.memslots.by_id.values()]
        if not slots:
            return
        a = Args(self, data)
        fd, s = a.draw(st.sampled_from(slots))
        size = a.draw(st.sampled_from([0, s.npages * PAGE]))
        arg = K.kvm_userspace_memory_region2(
            slot=s.id, flags=a.draw(st.sampled_from([s.flags, 0, K.KVM_MEM_LOG_DIRTY_PAGES])),
            guest_phys_addr=a.draw(st.sampled_from([s.base_gpa, s.base_gpa + 0x100000])),
            memory_size=size, userspace_addr=s.userspace_addr)
        self.call("ioctl", fd, K.KVM_SET_USER_MEMORY_REGION2, arg)

    @rule(data=st.data())
    def set_memory_attributes(self, data: st.DataObject) -> None:
        a = Args(self, data)
        arg = K.kvm_memory_attributes(address=a(GPA), size=a(SIZE), attributes=a(ATTRS),
                                      flags=a(RESERVED))
        self.call("ioctl", a.fd("kvm-vm"), K.KVM_SET_MEMORY_ATTRIBUTES, a.arg(arg))

    @rule(data=st.data())
    def create_vcpu(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ioctl", a.fd("kvm-vm"), K.KVM_CREATE_VCPU, a(VCPU_ID))

    # ----- vCPU ---------------------------------------------------------------------------
    @rule(data=st.data())
    def run(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ioctl", a.fd("kvm-vcpu"), K.KVM_RUN, a(RESERVED))

    @rule(data=st.data())
    def regs(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.fd("kvm-vcpu")
        if a.draw(st.booleans()):
            self.call("ioctl", fd, K.KVM_GET_REGS, a.arg(K.kvm_regs()))
        else:
            raw = a.draw(st.binary(min_size=ctypes.sizeof(K.kvm_regs),
                                   max_size=ctypes.sizeof(K.kvm_regs)))
            self.call("ioctl", fd, K.KVM_SET_REGS, a.arg(K.kvm_regs.from_buffer_copy(raw)))

    # ----- memfd --------------------------------------------------------------------------
    @rule(data=st.data())
    def memfd_create(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("memfd_create", a(MFD_NAME), a(MFD_FLAGS))

    @rule(data=st.data())
    def add_seals(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("fcntl", a.fd("memfd"), L.F_ADD_SEALS, a(SEALS))

    @rule(data=st.data())
    def ftruncate(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("ftruncate", a.fd("memfd", "guest_memfd"), a(SLENGTH))

    @rule(data=st.data())
    def fallocate(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("fallocate", a.fd("memfd", "guest_memfd"), a(FALLOC_MODE), a(SOFFSET),
                  a(SLENGTH))

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.fd("memfd", "guest_memfd", "null")
        if a.draw(st.booleans()):
            self.call("read", fd, a(RW_COUNT))
        else:
            self.call("pread", fd, a(RW_COUNT), a(SOFFSET))

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        a = Args(self, data)
        fd = a.fd("memfd", "guest_memfd", "null")
        if a.draw(st.booleans()):
            self.call("write", fd, a(PAYLOAD))
        else:
            self.call("pwrite", fd, a(PAYLOAD), a(SOFFSET))

    # ----- the address space ---------------------------------------------------------------
    @rule(data=st.data())
    def mmap(self, data: st.DataObject) -> None:
        a = Args(self, data)
        flags = a(MAP_FLAGS)
        addr = a.page_addr() if flags & (L.MAP_FIXED | L.MAP_FIXED_NOREPLACE) else 0
        fd = a.fd("memfd", "memfd", "guest_memfd", "kvm-vcpu", "kvm-vm", "kvm-dev", "null")
        offset = a(SOFFSET)
        if offset < 0 and "mmap-negative-offset" in KNOWN_BUGS:
            return
        self.call("mmap", addr, a(LENGTH), a(PROT), flags, fd, offset)

    @rule(data=st.data())
    def munmap(self, data: st.DataObject) -> None:
        a = Args(self, data)
        addr = a.page_addr() if a.draw(st.booleans()) else a.addr()
        if not a.sane and a.draw(st.integers(0, 3)) == 0:
            addr = a.draw(negative)
        self.call("munmap", addr, a(LENGTH))

    @rule(data=st.data())
    def peek(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("peek", a.addr(), a(PEEK))

    @rule(data=st.data())
    def poke(self, data: st.DataObject) -> None:
        a = Args(self, data)
        self.call("poke", a.addr(), a(POKE))

    # ----- properties -----------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        assert not self.host.sched.violations, self.host.sched.violations

    @invariant()
    def vmas_well_formed(self) -> None:
        """VMAs are non-empty, page aligned, in order, disjoint, inside the address space."""
        last = 0
        for start, v in self.host.proc.mm.vmas.items():
            assert start == v.start and last <= v.start < v.end <= L.TASK_SIZE, (v, last)
            assert not (v.start | v.end) % PAGE, v
            last = v.end

    @invariant()
    def bookkeeping(self) -> None:
        """kernel.live counts exactly what the process can reach: its files (through fds and
        VMAs), their VMs, the VMs' memslots, its VMAs, and nothing else. A mismatch is a leak
        or a double free, caught at the step that made it rather than at teardown."""
        proc = self.host.proc
        files = {id(f): f for f in proc.fds.values()}
        files.update({id(v.file): v.file for v in proc.mm.vmas.values() if v.file is not None})
        kvms = {id(f.kvm): f.kvm for f in files.values() if getattr(f, "kvm", None) is not None}
        reach: dict[str, int] = {}
        for f in files.values():
            reach[f.kind] = reach.get(f.kind, 0) + 1
        reach["kvm"] = len(kvms)
        reach["memslot"] = sum(len(k.memslots.by_id) for k in kvms.values())
        reach["vma"] = len(proc.mm.vmas)
        # No call here takes a long-term pin (no iommufd, VFIO or udmabuf), so "pin" is absent.
        live = self.host.kernel.live
        assert live == {k: v for k, v in reach.items() if v}, (live, reach)

    def teardown(self) -> None:
        host = self.host
        host.exit()
        assert not host.sched.violations, host.sched.violations
        assert not host.proc.fds and not host.proc.mm.vmas
        assert host.leaks() == []


EXAMPLES = int(os.environ.get("PASSTHRU_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("profile", PROFILES)
def test_syscall_fuzz(profile: str) -> None:
    machine = type(f"SyscallFuzz_{profile.replace('.', '_').replace('-', '_')}",
                   (SyscallFuzz,), {"PROFILE": profile})
    run_state_machine_as_test(machine, settings=SETTINGS)
