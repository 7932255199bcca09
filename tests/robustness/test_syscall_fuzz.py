"""Random syscall sequences against SimHost: valid calls that build deep state (VMs with
memslots, guest_memfd mapped, sealed memfds, vCPUs) mixed with garbage (bad fds, wrong struct
sizes, unknown requests and flag bits, huge lengths and offsets, misaligned values).

Properties, checked after every call:

1. only OSError or passthru.Fault escape a call (anything else propagates and fails the test);
   a Fault only from peek/poke — a real syscall returns EFAULT, it never raises a signal;
2. a call that fails with OSError changes nothing observable (see :func:`snapshot`), except
   where the real kernel itself leaves partial state (listed in :func:`may_populate`);
   a Fault from peek/poke may have faulted pages in, and changes nothing else;
3. the model records no violation (the calls are single-threaded and legal from userspace);
4. after host.exit(), host.leaks() is empty.

Runs under each profile of PROFILES (``-k linux-6.18`` picks one). PASSTHRU_FUZZ_EXAMPLES
raises the example count for a longer local run; CI uses the deterministic default.
"""

from __future__ import annotations

import ctypes
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
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PROFILES = ("linux-7.1", "linux-6.18")
PAGE = L.PAGE_SIZE
RESET_VECTOR_GPA = 0xFFFF0000  # CS base at reset: a slot here lets KVM_RUN execute guest code

# Known model bugs, each with an xfail(strict=True) reproducer in test_model_bugs.py. While one
# is open the fuzzer tolerates exactly its symptom; when it is fixed, delete its entry here.
KNOWN_BUGS = {
    # Kvm.destroy never frees the vCPUs' kvm_run pages (Vcpu.free is never called).
    "vcpu-run-page-leak",
}

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
page_offset = st.integers(0, 15).map(lambda n: n * PAGE)


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


SIZE = Field(pages, st.just(0), misaligned, u64)
LENGTH = Field(pages, st.just(0), misaligned, u64)  # size_t
SLENGTH = Field(pages, st.just(0), misaligned, s64)  # off_t
OFFSET = Field(page_offset, misaligned, u64)
SOFFSET = Field(page_offset, misaligned, s64)
GPA = Field(st.one_of(page_offset, st.just(RESET_VECTOR_GPA), st.just(0x100000)), misaligned, u64)
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
MFD_NAME = Field(st.just("guest-ram"), st.text(max_size=300))
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
# F_DUPFD's argument stays small: a huge one is a known model divergence (test_model_bugs).
FCNTL_ARG = Field(st.integers(0, 64), SEALS.wild, st.just(L.FD_CLOEXEC))
OPEN_PATH = Field(st.sampled_from(["/dev/kvm", "/dev/null"]),
                  st.sampled_from(["/dev/nope", "", "/dev/kvm/x"]))
OPEN_FLAGS = Field(st.sampled_from([L.O_RDWR | L.O_CLOEXEC, L.O_RDWR]),
                   st.sampled_from([L.O_RDONLY, L.O_WRONLY, L.O_ACCMODE]), s32)
RW_COUNT = Field(st.integers(0, 3 * PAGE))
PAYLOAD = Field(st.binary(max_size=2 * PAGE))
# Guest code for the reset vector: hlt; and "mov [0x8000],al; out 0x10,al; hlt" (KERNEL.md §9)
GUEST_CODE = [b"\xf4", b"\xa2\x00\x80\xe6\x10\xf4"]
POKE = Field(st.one_of(st.binary(max_size=64), st.sampled_from(GUEST_CODE)),
             st.binary(max_size=2 * PAGE))
PEEK = Field(st.integers(0, 64), st.integers(0, 3 * PAGE))
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


def resized(obj: ctypes.Structure, data: st.DataObject) -> Any:
    """``obj`` as the ioctl argument, or its bytes cut short or padded with junk."""
    how = data.draw(st.sampled_from(["struct"] * 4 + ["short", "long", "empty"]))
    raw = bytes(obj)
    if how == "short":
        return bytearray(raw[: data.draw(st.integers(0, len(raw) - 1))])
    if how == "long":
        return bytearray(raw + data.draw(st.binary(min_size=1, max_size=32)))
    if how == "empty":
        return bytearray()
    return obj


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
                     populate: bool) -> None:
    """A failed call left no trace. With ``populate``, it may have faulted pages in (RAM up,
    never down), which the real kernel does too; nothing else may differ."""
    diff = [k for k in before if before[k] != after[k]]
    if populate and "ram" in diff and after["ram"] > before["ram"]:
        diff.remove("ram")
    assert not diff, (
        f"failed call {call} changed state: "
        + "; ".join(f"{k}: {before[k]!r} -> {after[k]!r}" for k in diff)
    )


def may_populate(method: str, args: tuple[Any, ...], host: SimHost) -> bool:
    """Failed calls after which the real kernel may have allocated page cache or anonymous
    pages, so the model may too. Precisely:

    - peek/poke (a CPU access): the pages before the faulting one were faulted in;
    - ioctl with an integer argument: copy_from_user/copy_to_user through a user pointer
      faults the pointed-to pages in before the ioctl's own checks can fail; KVM_RUN (an
      integer argument too) faults guest pages in before an exit or an EFAULT;
    - fallocate on a guest_memfd: kvm_gmem_allocate keeps the folios it allocated before an
      ENOMEM (shmem_fallocate, by contrast, undoes them: memfd is *not* excused).
    """
    if method in ("peek", "poke"):
        return True
    if method == "ioctl":
        return isinstance(args[2], int)
    if method == "fallocate":
        f = host.proc.fds.get(args[0])
        return f is not None and f.kind == "guest_memfd"
    return False


# ---------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------

FAILED = object()


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
        except OSError:
            assert_unchanged(before, snapshot(host), f"{method}{args!r}",
                             may_populate(method, args, host))
            return FAILED
        except Fault:
            assert method in ("peek", "poke"), (
                f"{method}{args!r} raised a Fault: a syscall returns EFAULT, it does not "
                "deliver a signal")
            assert_unchanged(before, snapshot(host), f"{method}{args!r}", True)
            return FAILED
        if method == "close":
            self.closed.append(args[0])
        if method == "mmap":
            self.stale_maps.append(ret)
        return ret

    def fds(self, *kinds: str) -> list[int]:
        return [fd for fd, f in sorted(self.host.proc.fds.items()) if not kinds or f.kind in kinds]

    def fd(self, data: st.DataObject, *kinds: str) -> int:
        """Usually a live fd of one of ``kinds``; sometimes any live fd, a closed one, or one
        that was never valid."""
        options: list[st.SearchStrategy[int]] = [bad_fd]
        if self.closed:
            options.append(st.sampled_from(self.closed))
        if self.fds():
            options.append(st.sampled_from(self.fds()))
        if kinds and self.fds(*kinds):
            options += [st.sampled_from(self.fds(*kinds))] * 6
        return data.draw(st.one_of(*options))

    def addr(self, data: st.DataObject) -> int:
        """Usually inside (or just past) a current mapping; else a stale or garbage address."""
        vmas = list(self.host.proc.mm.vmas.values())
        options: list[st.SearchStrategy[int]] = [u64]
        if self.stale_maps:
            options.append(st.sampled_from(self.stale_maps))
        if vmas:
            inside = st.tuples(st.sampled_from(vmas), st.integers(0, 1 << 16)).map(
                lambda t: t[0].start + t[1] % (t[0].end - t[0].start + PAGE))
            options += [inside] * 4
        return data.draw(st.one_of(*options))

    def uaddr(self, data: st.DataObject) -> int:
        """A page-aligned user address for a memslot: a mapping's start, mostly."""
        vmas = list(self.host.proc.mm.vmas.values())
        options: list[st.SearchStrategy[int]] = [u64, st.just(0)]
        if vmas:
            options += [st.sampled_from([v.start for v in vmas])] * 4
        return data.draw(st.one_of(*options))

    def ioctl_arg(self, data: st.DataObject) -> Any:
        """Garbage for any ioctl: an integer (value or user pointer), a struct, a buffer."""
        kind = data.draw(st.sampled_from(["int", "pointer", "struct", "buffer", "none"]))
        if kind == "int":
            return data.draw(st.one_of(st.just(0), u64))
        if kind == "pointer":
            return self.addr(data)
        if kind == "struct":
            return data.draw(random_struct())
        if kind == "buffer":
            return data.draw(st.binary(max_size=80).map(bytearray))
        return None

    # ----- deep state quickly ----------------------------------------------------------
    @initialize(data=st.data())
    def prebuild(self, data: st.DataObject) -> None:
        """Most runs start with /dev/kvm, a VM, a guest_memfd bound to a slot at the reset
        vector and mapped, and a sealable memfd mapped: the rules then work on real state."""
        if not data.draw(st.booleans() | st.just(True), label="prebuild"):
            return
        h = self.host
        kfd = self.call("open", "/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
        vmt = data.draw(st.sampled_from([K.KVM_X86_DEFAULT_VM, K.KVM_X86_SW_PROTECTED_VM]))
        vm = self.call("ioctl", kfd, K.KVM_CREATE_VM, vmt)
        if vm is FAILED:
            vm = self.call("ioctl", kfd, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)
        mmap, shared = K.GUEST_MEMFD_FLAG_MMAP, K.GUEST_MEMFD_FLAG_INIT_SHARED
        gflags = data.draw(st.sampled_from([0, mmap, mmap | shared]))
        gm = self.call("ioctl", vm, K.KVM_CREATE_GUEST_MEMFD,
                       K.kvm_create_guest_memfd(size=0x10000, flags=gflags))
        if gm is FAILED:
            gm = self.call("ioctl", vm, K.KVM_CREATE_GUEST_MEMFD,
                           K.kvm_create_guest_memfd(size=0x10000, flags=0))
        if gflags & K.GUEST_MEMFD_FLAG_MMAP:
            self.call("mmap", 0, 0x10000, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, gm, 0)
        mfd = self.call("memfd_create", "ram", L.MFD_ALLOW_SEALING)
        self.call("ftruncate", mfd, 0x10000)
        ram = self.call("mmap", 0, 0x10000, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, mfd, 0)
        self.call("ioctl", vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
            slot=0, flags=K.KVM_MEM_GUEST_MEMFD, guest_phys_addr=RESET_VECTOR_GPA,
            memory_size=0x10000, userspace_addr=ram, guest_memfd=gm))
        self.call("ioctl", vm, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
            slot=1, flags=0, guest_phys_addr=0, memory_size=0x10000, userspace_addr=ram))
        if data.draw(st.booleans(), label="vcpu"):
            self.call("ioctl", vm, K.KVM_CREATE_VCPU, 0)
        assert not h.sched.violations

    # ----- generic fd syscalls ------------------------------------------------------------
    @rule(path=open_path, flags=open_flags)
    def open(self, path: str, flags: int) -> None:
        self.call("open", path, flags)

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        self.call("close", self.fd(data))

    @rule(data=st.data(), cmd=fcntl_cmd, arg=fcntl_arg)
    def fcntl(self, data: st.DataObject, cmd: int, arg: int) -> None:
        self.call("fcntl", self.fd(data, "memfd"), cmd, arg)

    @rule(data=st.data(), req=request)
    def random_ioctl(self, data: st.DataObject, req: int) -> None:
        self.call("ioctl", self.fd(data), req, self.ioctl_arg(data))

    # ----- /dev/kvm and the VM fd ---------------------------------------------------------
    @rule(data=st.data(), vmt=vm_type)
    def create_vm(self, data: st.DataObject, vmt: int) -> None:
        self.call("ioctl", self.fd(data, "kvm-dev"), K.KVM_CREATE_VM, vmt)

    @rule(data=st.data(), cap=caps)
    def check_extension(self, data: st.DataObject, cap: int) -> None:
        self.call("ioctl", self.fd(data, "kvm-dev", "kvm-vm"), K.KVM_CHECK_EXTENSION, cap)

    @rule(data=st.data(), size=size, flags=gmem_flags, reserved=u64)
    def create_gmem(self, data: st.DataObject, size: int, flags: int, reserved: int) -> None:
        arg = K.kvm_create_guest_memfd(size=size, flags=flags)
        arg.reserved[0] = data.draw(st.sampled_from([0, 0, reserved]))
        self.call("ioctl", self.fd(data, "kvm-vm"), K.KVM_CREATE_GUEST_MEMFD, resized(arg, data))

    @rule(data=st.data(), slot=slot_id, flags=slot_flags, gpa=gpa, size=size,
          offset=st.one_of(st.just(0), page_count, u64), pad=st.sampled_from([0, 0, 0, 1]))
    def set_region2(self, data: st.DataObject, slot: int, flags: int, gpa: int, size: int,
                    offset: int, pad: int) -> None:
        arg = K.kvm_userspace_memory_region2(
            slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
            userspace_addr=self.uaddr(data), guest_memfd_offset=offset,
            guest_memfd=self.fd(data, "guest_memfd", "memfd") & 0xFFFFFFFF, pad1=pad)
        arg.pad2[0] = pad
        self.call("ioctl", self.fd(data, "kvm-vm"), K.KVM_SET_USER_MEMORY_REGION2,
                  resized(arg, data))

    @rule(data=st.data(), slot=slot_id, flags=slot_flags, gpa=gpa, size=size)
    def set_region1(self, data: st.DataObject, slot: int, flags: int, gpa: int,
                    size: int) -> None:
        arg = K.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                            memory_size=size, userspace_addr=self.uaddr(data))
        self.call("ioctl", self.fd(data, "kvm-vm"), K.KVM_SET_USER_MEMORY_REGION,
                  resized(arg, data))

    @rule(data=st.data())
    def delete_slot(self, data: st.DataObject) -> None:
        vms = [f for f in self.host.proc.fds.values() if f.kind == "kvm-vm"]
        slots = [(vm, s) for vm in vms for s in vm.kvm.memslots.by_id.values()]
        if not slots:
            return
        vm, s = data.draw(st.sampled_from(slots))
        fd = next(fd for fd, f in self.host.proc.fds.items() if f is vm)
        arg = K.kvm_userspace_memory_region2(slot=s.id, flags=s.flags,
                                             guest_phys_addr=s.base_gpa, memory_size=0)
        self.call("ioctl", fd, K.KVM_SET_USER_MEMORY_REGION2, arg)

    @rule(data=st.data(), address=gpa, size=size, flags=st.sampled_from([0, 0, 0, 1, 1 << 63]),
          attrs=st.sampled_from([0, K.KVM_MEMORY_ATTRIBUTE_PRIVATE,
                                 K.KVM_MEMORY_ATTRIBUTE_PRIVATE, 1, (1 << 64) - 1]))
    def set_memory_attributes(self, data: st.DataObject, address: int, size: int, flags: int,
                              attrs: int) -> None:
        arg = K.kvm_memory_attributes(address=address, size=size, attributes=attrs, flags=flags)
        self.call("ioctl", self.fd(data, "kvm-vm"), K.KVM_SET_MEMORY_ATTRIBUTES,
                  resized(arg, data))

    @rule(data=st.data(), vid=vcpu_id)
    def create_vcpu(self, data: st.DataObject, vid: int) -> None:
        self.call("ioctl", self.fd(data, "kvm-vm"), K.KVM_CREATE_VCPU, vid)

    # ----- vCPU ---------------------------------------------------------------------------
    @rule(data=st.data(), arg=st.sampled_from([0, 0, 0, 1]))
    def run(self, data: st.DataObject, arg: int) -> None:
        self.call("ioctl", self.fd(data, "kvm-vcpu"), K.KVM_RUN, arg)

    @rule(data=st.data(), raw=st.binary(min_size=ctypes.sizeof(K.kvm_regs),
                                         max_size=ctypes.sizeof(K.kvm_regs)))
    def regs(self, data: st.DataObject, raw: bytes) -> None:
        fd = self.fd(data, "kvm-vcpu")
        if data.draw(st.booleans()):
            self.call("ioctl", fd, K.KVM_GET_REGS, resized(K.kvm_regs(), data))
        else:
            self.call("ioctl", fd, K.KVM_SET_REGS, resized(K.kvm_regs.from_buffer_copy(raw), data))

    # ----- memfd --------------------------------------------------------------------------
    @rule(name=st.one_of(st.just("m"), st.text(max_size=300)), flags=mfd_flags)
    def memfd_create(self, name: str, flags: int) -> None:
        self.call("memfd_create", name, flags)

    @rule(data=st.data(), s=seals)
    def add_seals(self, data: st.DataObject, s: int) -> None:
        self.call("fcntl", self.fd(data, "memfd"), L.F_ADD_SEALS, s)

    @rule(data=st.data(), length=st.one_of(page_count, st.just(0), st.integers(0, 3 * PAGE),
                                           s64))
    def ftruncate(self, data: st.DataObject, length: int) -> None:
        self.call("ftruncate", self.fd(data, "memfd", "guest_memfd"), length)

    @rule(data=st.data(), mode=falloc_mode, offset=soffset,
          length=st.one_of(page_count, st.integers(1, 3 * PAGE), s64))
    def fallocate(self, data: st.DataObject, mode: int, offset: int, length: int) -> None:
        self.call("fallocate", self.fd(data, "memfd", "guest_memfd"), mode, offset, length)

    @rule(data=st.data(), n=st.integers(0, 3 * PAGE), offset=st.one_of(st.none(), soffset))
    def read(self, data: st.DataObject, n: int, offset: int | None) -> None:
        fd = self.fd(data, "memfd", "guest_memfd", "null")
        if offset is None:
            self.call("read", fd, n)
        else:
            self.call("pread", fd, n, offset)

    @rule(data=st.data(), payload=st.binary(max_size=2 * PAGE),
          offset=st.one_of(st.none(), soffset))
    def write(self, data: st.DataObject, payload: bytes, offset: int | None) -> None:
        fd = self.fd(data, "memfd", "guest_memfd", "null")
        if offset is None:
            self.call("write", fd, payload)
        else:
            self.call("pwrite", fd, payload, offset)

    # ----- the address space ---------------------------------------------------------------
    @rule(data=st.data(), length=st.one_of(page_count, page_count, st.integers(1, 3 * PAGE), u64),
          p=prot, flags=map_flags, offset=st.one_of(st.just(0), st.just(0), page_count, s64))
    def mmap(self, data: st.DataObject, length: int, p: int, flags: int, offset: int) -> None:
        addr = self.addr(data) if data.draw(st.integers(0, 2)) == 0 else 0
        fd = self.fd(data, "memfd", "guest_memfd", "kvm-vcpu", "kvm-vm", "kvm-dev", "null")
        self.call("mmap", addr, length, p, flags, fd, offset)

    @rule(data=st.data(), length=st.one_of(page_count, st.integers(0, 3 * PAGE), u64))
    def munmap(self, data: st.DataObject, length: int) -> None:
        addr = self.addr(data)
        if data.draw(st.booleans()):
            addr &= ~(PAGE - 1)
        self.call("munmap", addr, length)

    @rule(data=st.data(), n=st.one_of(st.integers(0, 64), st.integers(0, 3 * PAGE)))
    def peek(self, data: st.DataObject, n: int) -> None:
        self.call("peek", self.addr(data), n)

    @rule(data=st.data(), payload=st.one_of(
        st.binary(max_size=64), st.sampled_from([b"\xf4", b"\xb0\x41\xe6\x10\xf4"]),
        st.binary(max_size=2 * PAGE)))
    def poke(self, data: st.DataObject, payload: bytes) -> None:
        self.call("poke", self.addr(data), payload)

    # ----- properties -----------------------------------------------------------------------
    @invariant()
    def no_violation(self) -> None:
        assert not self.host.sched.violations, self.host.sched.violations

    def teardown(self) -> None:
        host = self.host
        host.exit()
        assert not host.sched.violations, host.sched.violations
        assert not host.proc.fds and not host.proc.mm.vmas
        assert leaks_excluding_known(host) == []


def leaks_excluding_known(host: SimHost) -> list[str]:
    leaks = host.leaks()
    if "vcpu-run-page-leak" in KNOWN_BUGS:
        phys = host.kernel.phys
        run_pages = sum(e - s for s, e, o in phys.owners if o.owner.startswith("kvm_run:"))
        if run_pages:
            rest = phys.allocated_bytes() - run_pages
            leaks = [x for x in leaks if "bytes of RAM" not in x]
            if rest:
                leaks.append(f"{rest:#x} bytes of RAM still allocated (besides kvm_run pages)")
    return leaks


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
