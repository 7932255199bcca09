"""Random syscall sequences against SimHost: valid calls that build deep state (VMs with
memslots, guest_memfd mapped, sealed memfds, vCPUs) mixed with garbage (bad fds, wrong struct
sizes, unknown requests and flag bits, huge lengths and offsets, misaligned values).

Properties, checked after every call:

1. only OSError or passthru.Fault escape a call (anything else propagates and fails the test);
   a Fault only from peek/poke — a real syscall returns EFAULT, it never raises a signal;
2. a call that fails with OSError changes nothing observable (see :func:`snapshot`), except
   where the real kernel itself leaves partial state (listed in :func:`excused`; both in
   fuzz_values.py, with the values every Field draws);
   a Fault from peek/poke may have faulted pages in, and changes nothing else;
3. the model records no violation (the calls are single-threaded and legal from userspace);
4. after host.exit(), host.leaks() is empty.

Runs under each profile of PROFILES (``-k linux-6.18`` picks one). PASSTHRU_FUZZ_EXAMPLES
raises the example count for a longer local run; CI uses the deterministic default.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pytest
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

from .fuzz_values import (
    ATTRS,
    CAP,
    FALLOC_MODE,
    FCNTL_ARG,
    FCNTL_CMD,
    GMEM_FLAGS,
    GPA,
    KNOWN_BUGS,
    LENGTH,
    MAP_FLAGS,
    MFD_FLAGS,
    MFD_NAME,
    OFFSET,
    OPEN_FLAGS,
    OPEN_PATH,
    PAGE,
    PAYLOAD,
    PEEK,
    POKE,
    PREBUILD,
    PROT,
    REQUEST,
    RESERVED,
    RESET_VECTOR_GPA,
    RW_COUNT,
    SEALS,
    SIZE,
    SLENGTH,
    SLOT,
    SLOT_FLAGS,
    SOFFSET,
    VCPU_ID,
    VM_TYPE,
    Field,
    assert_unchanged,
    bad_fd,
    excused,
    fuzz_settings,
    misaligned,
    negative,
    random_struct,
    snapshot,
    u64,
)

PROFILES = ("linux-7.1", "linux-6.18")


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


SETTINGS = fuzz_settings(200)


@pytest.mark.parametrize("profile", PROFILES)
def test_syscall_fuzz(profile: str) -> None:
    machine = type(f"SyscallFuzz_{profile.replace('.', '_').replace('-', '_')}",
                   (SyscallFuzz,), {"PROFILE": profile})
    run_state_machine_as_test(machine, settings=SETTINGS)
