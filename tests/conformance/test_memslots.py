"""KVM_SET_USER_MEMORY_REGION(2) validation with and without guest_memfd
(virt/kvm/kvm_main.c __kvm_set_memory_region, guest_memfd.c kvm_gmem_bind; KERNEL.md §5, §9),
and a real-mode guest run on a memfd-backed v1 slot."""

from __future__ import annotations

import errno
import struct

import pytest

from passthru.uapi import kvm
from passthru.uapi import linux as L

from ._kvm import create_gmem, create_vm, open_kvm, set_region1, set_region2
from ._probe import PAGE

pytestmark = pytest.mark.node("/dev/kvm")

GMEM = kvm.KVM_MEM_GUEST_MEMFD
RW = L.PROT_READ | L.PROT_WRITE


class Setup:
    """A VM with a 16-page guest_memfd whose pages [0, 4) back slot 0 at gpa [0, 4 pages)."""

    def __init__(self, host):
        self.host = host
        self.kvm = open_kvm(host)
        self.vm = create_vm(host, self.kvm)
        self.gmem = create_gmem(host, self.vm, 16 * PAGE)
        self.anon = host.mmap(0, 64 * PAGE, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
        set_region2(host, self.vm, 0, 0, 4 * PAGE, self.gmem, 0, uaddr=self.anon)

    def slot(self, slot, gpa, size, gmem=None, offset=0, flags=GMEM, uaddr=None, **kw):
        return set_region2(
            self.host,
            self.vm,
            slot,
            gpa,
            size,
            self.gmem if gmem is None else gmem,
            offset,
            flags=flags,
            uaddr=self.anon if uaddr is None else uaddr,
            **kw,
        )


@pytest.fixture
def s(host):
    return Setup(host)


def raises(errno_: int, fn, *args, **kw):
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    assert e.value.errno == errno_, e.value


# -- create / delete -----------------------------------------------------------------------


def test_gmem_slot_ok_and_size_zero_deletes(s):
    assert s.slot(1, 0x100000, 4 * PAGE, offset=8 * PAGE) == 0
    assert s.slot(1, 0, 0, flags=0) == 0
    # the gpa range and the gmem range are free again
    assert s.slot(2, 0x100000, 4 * PAGE, offset=8 * PAGE) == 0


def test_delete_then_rebind_same_gmem_range(s):
    s.slot(0, 0, 0)
    assert s.slot(1, 0, 4 * PAGE, offset=0) == 0


def test_delete_nonexistent_slot_einval(s):
    raises(errno.EINVAL, s.slot, 7, 0, 0, gmem=0, flags=0)
    raises(errno.EINVAL, s.slot, 7, 0, 0)


def test_delete_twice_einval(s):
    s.slot(0, 0, 0)
    raises(errno.EINVAL, s.slot, 0, 0, 0)


def test_slot_id_limits(s):
    # user slots are 0..NR_MEMSLOTS-1 (32764); the high 16 bits pick the address space (1: SMM)
    assert s.slot(32763, 0x200000, PAGE, offset=15 * PAGE) == 0
    raises(errno.EINVAL, s.slot, 32764, 0x300000, PAGE, offset=14 * PAGE)
    raises(errno.EINVAL, s.slot, 1 << 16, 0x300000, PAGE, offset=14 * PAGE)


def test_padding_not_checked(s):
    assert s.slot(1, 0x100000, PAGE, offset=8 * PAGE, pad1=1) == 0
    assert s.slot(2, 0x200000, PAGE, offset=9 * PAGE, pad2_0=1) == 0


def test_two_guest_memfds_two_slots(s):
    other = create_gmem(
        s.host, s.vm, 4 * PAGE, kvm.GUEST_MEMFD_FLAG_MMAP | kvm.GUEST_MEMFD_FLAG_INIT_SHARED
    )
    assert s.slot(1, 0x100000, 4 * PAGE, gmem=other, offset=0) == 0


def test_closing_bound_gmem_keeps_slot(s):
    s.host.close(s.gmem)
    assert s.slot(0, 0, 0, gmem=0, flags=0) == 0  # the slot held the file; delete still works


# -- guest-physical range ------------------------------------------------------------------


def test_overlap_eexist(s):
    raises(errno.EEXIST, s.slot, 1, 2 * PAGE, 4 * PAGE, offset=8 * PAGE)
    raises(errno.EEXIST, s.slot, 1, 3 * PAGE, 4 * PAGE, gmem=0, flags=0)


def test_misaligned_size_einval(s):
    raises(errno.EINVAL, s.slot, 1, 0x100000, 4 * PAGE + 1, offset=8 * PAGE)


def test_misaligned_gpa_einval(s):
    raises(errno.EINVAL, s.slot, 1, 0x100100, 4 * PAGE, offset=8 * PAGE)


def test_gpa_out_of_range_einval(s):
    raises(errno.EINVAL, s.slot, 1, 1 << 52, PAGE, gmem=0, flags=0)
    raises(errno.EINVAL, s.slot, 1, (1 << 64) - PAGE, 2 * PAGE, gmem=0, flags=0)


# -- flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        GMEM | (1 << 3),
        GMEM | (1 << 31),
        GMEM | kvm.KVM_MEM_READONLY,
        GMEM | kvm.KVM_MEM_LOG_DIRTY_PAGES,
    ],
    ids=["bit3", "bit31", "GMEM|READONLY", "GMEM|LOG_DIRTY"],
)
def test_bad_flags_einval(s, flags):
    raises(errno.EINVAL, s.slot, 1, 0x100000, 4 * PAGE, offset=8 * PAGE, flags=flags)


@pytest.mark.parametrize("flags", [kvm.KVM_MEM_READONLY, kvm.KVM_MEM_LOG_DIRTY_PAGES])
def test_readonly_and_dirty_without_gmem_ok(s, flags):
    assert s.slot(1, 0x100000, PAGE, gmem=0, flags=flags) == 0


# -- the guest_memfd binding -------------------------------------------------------------


@pytest.mark.parametrize("fd", [-1, 9999])
def test_bad_gmem_fd_ebadf(s, fd):
    raises(errno.EBADF, s.slot, 1, 0x100000, 4 * PAGE, gmem=fd, offset=8 * PAGE)


def test_gmem_fd_ignored_without_flag(s):
    assert s.slot(1, 0x100000, 4 * PAGE, gmem=-1, flags=0) == 0


def test_plain_memfd_as_gmem_einval(s):
    m = s.host.memfd_create("not-gmem", 0)
    s.host.ftruncate(m, 16 * PAGE)
    raises(errno.EINVAL, s.slot, 1, 0x100000, 4 * PAGE, gmem=m, offset=0)


def test_dev_kvm_fd_as_gmem_einval(s):
    raises(errno.EINVAL, s.slot, 1, 0x100000, 4 * PAGE, gmem=s.kvm, offset=0)


@pytest.mark.parametrize(
    ("offset", "size"),
    [(14 * PAGE, 4 * PAGE), (16 * PAGE, PAGE), ((1 << 64) - PAGE, PAGE), (0, 32 * PAGE)],
    ids=["straddles-end", "at-end", "offset-overflow", "larger-than-file"],
)
def test_range_past_gmem_einval(s, offset, size):
    raises(errno.EINVAL, s.slot, 1, 0x100000, size, offset=offset)


@pytest.mark.parametrize(
    ("offset", "size"),
    [(2 * PAGE, 4 * PAGE), (3 * PAGE, PAGE), (0, 4 * PAGE)],
    ids=["overlapping", "tail", "same"],
)
def test_range_bound_to_another_slot_einval(s, offset, size):
    raises(errno.EINVAL, s.slot, 1, 0x100000, size, offset=offset)


def test_adjacent_range_ok(s):
    assert s.slot(1, 0x100000, PAGE, offset=4 * PAGE) == 0


def test_misaligned_offset_einval(s):
    raises(errno.EINVAL, s.slot, 1, 0x100000, PAGE, offset=8 * PAGE + 0x100)


def test_misaligned_userspace_addr_einval(s):
    raises(errno.EINVAL, s.slot, 1, 0x100000, PAGE, offset=8 * PAGE, uaddr=s.anon + 1)


def test_gmem_of_another_vm_einval(s):
    vm2 = create_vm(s.host, s.kvm)
    g2 = create_gmem(s.host, vm2, 4 * PAGE)
    raises(errno.EINVAL, s.slot, 1, 0x100000, 4 * PAGE, gmem=g2, offset=0)


def test_gmem_ftruncate_still_einval_when_bound(s):
    raises(errno.EINVAL, s.host.ftruncate, s.gmem, 32 * PAGE)


def test_punch_hole_on_bound_gmem_ok(s):
    s.host.fallocate(s.gmem, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, PAGE)


# -- userspace_addr ----------------------------------------------------------------------


def test_userspace_addr_checked_for_range_not_mapping(s):
    # not mapped is fine (faults later); outside the user half is EINVAL
    assert s.slot(1, 0x100000, PAGE, gmem=0, flags=0, uaddr=0) == 0
    assert s.slot(2, 0x200000, PAGE, gmem=0, flags=0, uaddr=0x7000_0000_0000) == 0
    raises(errno.EINVAL, s.slot, 3, 0x300000, PAGE, gmem=0, flags=0, uaddr=0xFFFF_8000_0000_0000)


# -- modifying an existing slot ----------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        dict(gpa=0, size=4 * PAGE),
        dict(gpa=0x100000, size=4 * PAGE),
        dict(gpa=0, size=8 * PAGE),
        dict(gpa=0, size=4 * PAGE, gmem=0, flags=0),
    ],
    ids=["identical", "move", "resize", "drop-GUEST_MEMFD"],
)
def test_gmem_slot_is_immutable_einval(s, change):
    raises(errno.EINVAL, s.slot, 0, **change)


def test_plain_slot_modifications(s):
    assert s.slot(1, 0x100000, PAGE, gmem=0, flags=0) == 0
    assert s.slot(1, 0x100000, PAGE, gmem=0, flags=0) == 0  # identical: no-op
    assert s.slot(1, 0x100000, PAGE, gmem=0, flags=kvm.KVM_MEM_LOG_DIRTY_PAGES) == 0
    assert s.slot(1, 0x200000, PAGE, gmem=0, flags=0) == 0  # move
    raises(errno.EINVAL, s.slot, 1, 0x200000, 2 * PAGE, gmem=0, flags=0)  # resize
    raises(errno.EINVAL, s.slot, 1, 0x200000, PAGE, offset=8 * PAGE)  # becomes gmem


# -- v1 KVM_SET_USER_MEMORY_REGION --------------------------------------------------------


@pytest.fixture
def v1(host):
    k = open_kvm(host)
    vm = create_vm(host, k)
    m = host.memfd_create("guest-ram", 0)
    host.ftruncate(m, 16 * PAGE)
    addr = host.mmap(0, 16 * PAGE, RW, L.MAP_SHARED, m, 0)
    return host, vm, addr


def test_v1_misaligned_userspace_addr_einval(v1):
    host, vm, addr = v1
    raises(errno.EINVAL, set_region1, host, vm, 0, 0, PAGE, addr + 8)


def test_v1_memfd_backed_region_ok(v1):
    host, vm, addr = v1
    assert set_region1(host, vm, 0, 0, 16 * PAGE, addr) == 0
    raises(errno.EEXIST, set_region1, host, vm, 1, 4 * PAGE, PAGE, addr)
    raises(errno.EEXIST, set_region2, host, vm, 1, 4 * PAGE, PAGE, 0, 0, flags=0, uaddr=addr)
    assert set_region1(host, vm, 0, 0, 0, 0) == 0


def test_v1_flags(v1):
    host, vm, addr = v1
    raises(errno.EINVAL, set_region1, host, vm, 0, 0, PAGE, addr, flags=GMEM)
    raises(errno.EINVAL, set_region1, host, vm, 0, 0, PAGE, addr, flags=1 << 3)
    assert set_region1(host, vm, 0, 0, PAGE, addr, flags=kvm.KVM_MEM_READONLY) == 0


# -- a real-mode guest on a memfd-backed v1 slot ------------------------------------------

# struct kvm_run (include/uapi/linux/kvm.h): exit_reason at 8; the exit union at 32.
RUN_EXIT_REASON = 8
RUN_UNION = 32
KVM_EXIT_IO_OUT = 1
# mov [0x8000], al ; out 0x10, al ; hlt
GUEST_CODE = bytes([0xA2, 0x00, 0x80, 0xE6, 0x10, 0xF4])
RESET_GPA = 0xFFFF0000  # the vCPU starts at CS base 0xffff0000, IP 0xfff0


def test_real_mode_guest_exits_mmio_io_hlt(v1):
    host, vm, _ = v1
    m = host.memfd_create("bios", 0)
    host.ftruncate(m, 0x10000)
    ram = host.mmap(0, 0x10000, RW, L.MAP_SHARED, m, 0)
    host.poke(ram + 0xFFF0, GUEST_CODE)
    set_region1(host, vm, 0, RESET_GPA, 0x10000, ram)
    kfd = open_kvm(host)
    cpu = host.ioctl(vm, kvm.KVM_CREATE_VCPU, 0)
    size = host.ioctl(kfd, kvm.KVM_GET_VCPU_MMAP_SIZE, 0)
    run = host.mmap(0, size, RW, L.MAP_SHARED, cpu, 0)

    def exit_reason() -> int:
        return int(struct.unpack("<I", host.peek(run + RUN_EXIT_REASON, 4))[0])

    # nothing backs gpa 0x8000: the store exits to userspace as MMIO
    assert host.ioctl(cpu, kvm.KVM_RUN, 0) == 0
    assert exit_reason() == kvm.KVM_EXIT_MMIO
    phys, data, length, is_write = struct.unpack("<Q8sIB", host.peek(run + RUN_UNION, 21))
    assert (phys, length, is_write) == (0x8000, 1, 1)

    assert host.ioctl(cpu, kvm.KVM_RUN, 0) == 0
    assert exit_reason() == kvm.KVM_EXIT_IO
    direction, width, port, count, data_offset = struct.unpack(
        "<BBHIQ", host.peek(run + RUN_UNION, 16)
    )
    assert (direction, width, port, count) == (KVM_EXIT_IO_OUT, 1, 0x10, 1)
    assert host.peek(run + data_offset, 1) == data[:1]  # al, as stored to 0x8000

    assert host.ioctl(cpu, kvm.KVM_RUN, 0) == 0
    assert exit_reason() == kvm.KVM_EXIT_HLT
