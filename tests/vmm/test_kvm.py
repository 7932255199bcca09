"""passthru.vmm.kvm: /dev/kvm, VMs and vCPUs through the wrappers, on SimHost and LinuxHost.

The guests are 16-bit real-mode code at the reset vector (gpa 0xFFFFFFF0: CS base 0xffff0000,
IP 0xfff0), so the RAM under it is a 64 KiB region at gpa 0xFFFF0000.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import pytest

from passthru.uapi import kvm as K
from passthru.uapi import linux as L
from passthru.vmm import GuestMemory, Kvm, Memfd, Vcpu, VcpuExit, Vm

pytestmark = pytest.mark.needs_kvm

PAGE = L.PAGE_SIZE
BIOS_GPA = 0xFFFF0000
BIOS_SIZE = 0x10000
RESET_VECTOR = 0xFFFFFFF0
GMEM_SHARED = K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED

# mov [0x8000], al ; out 0x10, al ; hlt
STORE_OUT_HLT = bytes.fromhex("A2 00 80 E6 10 F4")
# mov al, [0x9000] ; mov [0x8000], al ; in al, 0x10 ; out 0x11, al ; mov al, 0x33 ;
# out 0x12, al ; hlt
READ_COMPLETIONS = bytes.fromhex("A0 00 90 A2 00 80 E4 10 E6 11 B0 33 E6 12 F4")


@dataclass
class Guest:
    kvm: Kvm
    vm: Vm
    mem: GuestMemory
    cpu: Vcpu


def boot(host: Any, code: bytes, guest_memfd: bool = True, regions: tuple = ()) -> Guest:
    """A VM whose RAM is ``regions`` plus the 64 KiB under the reset vector, ``code`` at the
    reset vector, and vCPU 0. Closing ``kvm`` closes everything."""
    kvm = Kvm(host)
    vm = kvm.create_vm()
    mem = vm.guest_memory([*regions, (BIOS_GPA, BIOS_SIZE)], guest_memfd=guest_memfd)
    mem.write(RESET_VECTOR, code)
    return Guest(kvm, vm, mem, vm.create_vcpu(0))


def test_system_and_vm_queries(host):
    with Kvm(host) as kvm:
        assert kvm.api_version() == K.KVM_API_VERSION == 12
        assert kvm.check_extension(K.KVM_CAP_USER_MEMORY2) == 1
        assert kvm.check_extension(K.KVM_CAP_GUEST_MEMFD) == 1
        assert kvm.check_extension(9999) == 0
        assert kvm.vcpu_mmap_size() == 3 * PAGE  # kvm_run, PIO page, coalesced MMIO ring
        vm = kvm.create_vm()
        assert vm.check_extension(K.KVM_CAP_GUEST_MEMFD_FLAGS) == GMEM_SHARED
        assert vm.run_size == kvm.vcpu_mmap_size()


@pytest.mark.parametrize("guest_memfd", [True, False], ids=["guest_memfd", "memfd"])
def test_real_mode_guest_exits_mmio_io_hlt(host, assert_released, guest_memfd):
    g = boot(host, STORE_OUT_HLT, guest_memfd=guest_memfd)
    with g.kvm:
        if guest_memfd:
            assert g.mem.regions[0].gmem is not None and g.mem.regions[0].memfd is None
        g.cpu.set_regs(rax=0x42)
        assert g.cpu.get_regs().rip == 0xFFF0

        ex = g.cpu.run()
        assert ex == VcpuExit(
            "MMIO", K.KVM_EXIT_MMIO, phys_addr=0x8000, len=1, is_write=True, data=b"\x42"
        )
        ex = g.cpu.run()
        assert (ex.reason, ex.direction, ex.size, ex.port, ex.count, ex.data) == (
            "IO",
            K.KVM_EXIT_IO_OUT,
            1,
            0x10,
            1,
            b"\x42",
        )
        assert ex.is_write and ex.phys_addr is None and ex.gpa is None
        assert g.cpu.run().reason == "HLT"
        assert g.cpu.get_regs().rip == 0xFFF0 + len(STORE_OUT_HLT)
        assert g.cpu.last_exit is not None and g.cpu.last_exit.code == K.KVM_EXIT_HLT
    assert g.kvm.closed and g.vm.closed and g.cpu.closed and g.mem.closed
    assert_released(host)


@pytest.mark.parametrize("guest_memfd", [True, False], ids=["guest_memfd", "memfd"])
def test_mmio_read_and_port_in_completed_by_the_vmm(host, assert_released, guest_memfd):
    g = boot(host, READ_COMPLETIONS, guest_memfd=guest_memfd)
    with g.kvm:
        cpu = g.vm.create_vcpu(1)  # a second vCPU runs the same reset-vector code
        ex = cpu.run()
        assert (ex.reason, ex.phys_addr, ex.len, ex.is_write, ex.data) == (
            "MMIO",
            0x9000,
            1,
            False,
            None,
        )
        cpu.set_mmio_data(b"\xa5")
        # the value lands in AL: the next store writes it to 0x8000
        ex = cpu.run()
        assert (ex.reason, ex.phys_addr, ex.is_write, ex.data) == ("MMIO", 0x8000, True, b"\xa5")
        ex = cpu.run()
        assert (ex.reason, ex.direction, ex.port, ex.size, ex.count, ex.is_write, ex.data) == (
            "IO",
            K.KVM_EXIT_IO_IN,
            0x10,
            1,
            1,
            False,
            None,
        )
        cpu.set_io_data(b"\x77")
        ex = cpu.run()
        assert (ex.reason, ex.port, ex.data) == ("IO", 0x11, b"\x77")
        assert cpu.get_regs().rax & 0xFF == 0x77
        ex = cpu.run()  # mov al, imm8 then out
        assert (ex.reason, ex.port, ex.data) == ("IO", 0x12, b"\x33")
        assert cpu.run().reason == "HLT"
    assert_released(host)


def test_completions_check_the_last_exit(host):
    g = boot(host, STORE_OUT_HLT)
    with g.kvm:
        cpu = g.cpu
        with pytest.raises(ValueError, match="not an MMIO read"):
            cpu.set_mmio_data(b"\0")  # no exit yet
        assert cpu.run().is_write
        with pytest.raises(ValueError, match="not an MMIO read"):
            cpu.set_mmio_data(b"\0")  # a write needs no completion
        with pytest.raises(ValueError, match="not a port IN"):
            cpu.set_io_data(b"\0")
        with pytest.raises(TypeError, match="no register"):
            cpu.set_regs(eax=1)


def test_wrong_length_mmio_completion(host):
    g = boot(host, READ_COMPLETIONS)
    with g.kvm:
        cpu = g.cpu
        assert cpu.run().len == 1
        with pytest.raises(ValueError, match="2 bytes for a 1-byte read"):
            cpu.set_mmio_data(b"\0\0")


def test_punch_hole_in_bound_guest_memfd_is_seen_by_the_guest(host, assert_released):
    # mov al, [0x1000] ; mov [0x8000], al ; hlt — reads RAM at gpa 0x1000, shows it via MMIO
    code = bytes.fromhex("A0 00 10 A2 00 80 F4")
    g = boot(host, code, regions=((0, 0x8000),))
    with g.kvm:
        low = g.mem.region(0x1000)
        assert (low.slot, low.gpa, low.size) == (0, 0, 0x8000)
        g.mem.write(0x1000, b"\xab")
        assert g.cpu.run().data == b"\xab"
        assert g.cpu.run().reason == "HLT"

        assert low.gmem is not None
        low.gmem.punch_hole(0x1000, PAGE)
        assert g.mem.read(0x1000, 1) == b"\0"  # the host view sees the hole too
        g.cpu.set_regs(rip=0xFFF0)
        assert g.cpu.run().data == b"\0"
    assert_released(host)


def test_v1_memslot_on_a_memfd(host, assert_released):
    with Kvm(host) as kvm, Memfd(host, "bios", size=BIOS_SIZE) as bios:
        vm = kvm.create_vm()
        view = bios.mmap()
        view.write(0xFFF0, STORE_OUT_HLT)
        vm.set_user_memory_region_v1(0, BIOS_GPA, BIOS_SIZE, view.addr)
        cpu = vm.create_vcpu(0)
        assert [cpu.run().reason for _ in range(3)] == ["MMIO", "IO", "HLT"]
        vm.delete_memory_region(0)
    assert_released(host)


def test_errors_are_oserror_with_the_kernel_errno(host, assert_released):
    with Kvm(host) as kvm:
        vm = kvm.create_vm()
        with pytest.raises(OSError) as e:
            vm.create_guest_memfd(PAGE - 1)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:
            vm.delete_memory_region(7)  # no such slot
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:
            vm.create_guest_memfd(PAGE).mmap()  # made without GUEST_MEMFD_FLAG_MMAP
        assert e.value.errno == errno.ENODEV
        with pytest.raises(OSError) as e:
            vm.set_user_memory_region(1, 0, PAGE, guest_memfd=-1)
        assert e.value.errno == errno.EBADF
        with pytest.raises(OSError) as e:
            vm.set_memory_attributes(0, PAGE, K.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        # 6.18 (no CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES: /dev/kvm answers 0 for the cap) has
        # no such ioctl: ENOTTY. With it (a kernel with KVM_SW_PROTECTED_VM, as the 7.x
        # profiles) a default VM has no private memory, so PRIVATE is outside
        # kvm_supported_mem_attributes: EINVAL (virt/kvm/kvm_main.c).
        has_attrs = kvm.check_extension(K.KVM_CAP_MEMORY_ATTRIBUTES) != 0
        assert e.value.errno == (errno.EINVAL if has_attrs else errno.ENOTTY)
        vm.create_vcpu(0)
        with pytest.raises(OSError) as e:
            vm.create_vcpu(0)
        assert e.value.errno == errno.EEXIST
        # a failed GuestMemory leaves nothing behind: the second region overlaps the first
        with pytest.raises(OSError) as e:
            vm.guest_memory([(0, 4 * PAGE), (2 * PAGE, 4 * PAGE)], guest_memfd=True)
        assert e.value.errno == errno.EEXIST
        mem = vm.guest_memory([(0, 4 * PAGE)], guest_memfd=True)  # slot 0 is free again
        assert mem.regions[0].slot == 0
    with pytest.raises(OSError) as e:
        Kvm(host, "/dev/kvm-nonexistent")
    assert e.value.errno == errno.ENOENT
    assert_released(host)


def test_closing_the_vm_fd_first_keeps_the_vm_for_its_vcpu(host, assert_released):
    """close(children=False) releases only the VM fd: the kernel keeps the VM alive while
    the vCPU fd (and the guest_memfd) refer to it, and the vCPU still runs."""
    g = boot(host, STORE_OUT_HLT)
    g.cpu.run()
    g.vm.close(children=False)
    assert g.vm.closed and not g.cpu.closed and not g.mem.closed
    assert [g.cpu.run().reason for _ in range(2)] == ["IO", "HLT"]
    g.cpu.close()  # the guest_memfd still holds the VM
    g.mem.close()  # no VM fd to delete slots with: unmap, close the guest_memfd; VM destroyed
    g.kvm.close()
    assert_released(host)


def test_context_managers_close_everything(host, assert_released):
    with Kvm(host) as kvm:
        vm = kvm.create_vm()
        gmem = vm.create_guest_memfd(4 * PAGE, GMEM_SHARED)
        view = gmem.mmap()
        view.write(0, b"hello")
        vm.set_user_memory_region(0, 0x100000, 4 * PAGE, view.addr, guest_memfd=gmem)
        mem = vm.guest_memory([(BIOS_GPA, BIOS_SIZE)], first_slot=1)
        mem.write(RESET_VECTOR, STORE_OUT_HLT)
        cpu = vm.create_vcpu(0)
        cpu.run()
        assert cpu.kvm_run.length == kvm.vcpu_mmap_size()
    for obj in (kvm, vm, gmem, view, mem, cpu):
        assert obj.closed
    with pytest.raises(ValueError, match="closed"):
        cpu.run()
    with pytest.raises(ValueError, match="closed"):
        view.read(0, 1)
    kvm.close()  # idempotent
    assert_released(host)


class _KernelRunConvention:
    """SimHost, but KVM_RUN fails with EFAULT when it reports KVM_EXIT_MEMORY_FAULT, as the
    real kernel does (api.rst); the model returns 0 (see the report)."""

    def __init__(self, host: Any) -> None:
        self._host = host
        self._runs: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)

    def mmap(self, addr, length, prot, flags, fd, offset):
        got = self._host.mmap(addr, length, prot, flags, fd, offset)
        self._runs[fd] = got
        return got

    def ioctl(self, fd, request, arg=0):
        ret = self._host.ioctl(fd, request, arg)
        if request == K.KVM_RUN:
            reason = int.from_bytes(self._host.peek(self._runs[fd] + 8, 4), "little")
            if reason == K.KVM_EXIT_MEMORY_FAULT:
                raise OSError(errno.EFAULT, "KVM_RUN: memory fault")
        return ret


@pytest.mark.parametrize("convention", ["model", "kernel"])
def test_memory_fault_exit_on_a_sw_protected_vm(convention, assert_released):
    """A private access to a slot without guest_memfd exits KVM_EXIT_MEMORY_FAULT. Needs a
    KVM_X86_SW_PROTECTED_VM, which this machine's kernel lacks: SimHost linux-7.1 only."""
    from passthru import SimHost

    sim = SimHost(profile="linux-7.1")
    host: Any = sim if convention == "model" else _KernelRunConvention(sim)
    with Kvm(host) as kvm:
        assert kvm.check_extension(K.KVM_CAP_VM_TYPES) & 1 << K.KVM_X86_SW_PROTECTED_VM
        vm = kvm.create_vm(K.KVM_X86_SW_PROTECTED_VM)
        mem = vm.guest_memory([(0, 0x10000), (BIOS_GPA, BIOS_SIZE)])
        mem.write(RESET_VECTOR, STORE_OUT_HLT)
        vm.set_memory_attributes(0x8000, PAGE, K.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        ex = vm.create_vcpu(0).run()
        assert ex == VcpuExit(
            "MEMORY_FAULT",
            K.KVM_EXIT_MEMORY_FAULT,
            flags=K.KVM_MEMORY_EXIT_FLAG_PRIVATE,
            gpa=0x8000,
            size=PAGE,
        )
        assert "gpa=0x8000" in repr(ex)
    assert_released(sim)
