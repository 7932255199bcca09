"""A vCPU that executes a tiny subset of 16-bit real-mode x86 (arch/x86/kvm/emulate.c and
x86.c's KVM_RUN exit handling, reduced to what a VMM's first test guest uses).

KVM_RUN starts from the architectural reset state (CS base 0xffff0000, IP 0xfff0, all other
registers 0) and runs until an exit: an access with no memslot behind it (KVM_EXIT_MMIO), port
I/O (KVM_EXIT_IO, data in the PIO page at kvm_run + 4096), or HLT. An MMIO or port read is
completed on the next KVM_RUN from the data the VMM left in kvm_run, as the kernel's
complete_userspace_io does. Guest memory goes through the modelled MMU, so it obeys memslots,
guest_memfd and physical truth. Exits are written into kvm_run through the uAPI mirror's
structs (``Vcpu.write_exit``), never packed by hand.

Instructions: nop, hlt, mov r8/r16 imm, mov al/ax <-> moffs16, in/out al with imm8 or dx,
jmp rel8/rel16. Anything else: KVM_EXIT_INTERNAL_ERROR (emulation failure).
Invariants: ``pending_read`` is set only between an MMIO/IO read exit and the next KVM_RUN.
Units: register values and ``ip`` are 16-bit; offsets into kvm_run in bytes.
Locking: a RealModeCpu belongs to one vCPU and is used only under its ``vcpu->mutex``
(kvm_main.py asserts it for every vCPU ioctl).
The operand-size prefix (0x66) is understood for ``mov eax, moffs16`` / ``mov moffs16, eax``
(A1/A3) only: 4-byte MMIO accesses, as device registers need.
Leaves out: protected/long mode, interrupts, flags arithmetic, segments other than the reset
values, other prefixed instructions.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...uapi import kvm as K
from ...uapi import linux as L

if TYPE_CHECKING:
    from .kvm_main import Vcpu

# Where the data of an MMIO read exit and of port I/O live in the vCPU's mapping.
MMIO_DATA = K.kvm_run.mmio.offset + K._kvm_run_mmio.data.offset
PIO_OFFSET = K.KVM_PIO_PAGE_OFFSET * L.PAGE_SIZE
MAX_STEPS = 100_000
REG8 = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"]
REG16 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"]


class RealModeCpu:
    def __init__(self) -> None:
        self.regs = {r: 0 for r in REG16 + ["r8", "r9", "r10", "r11", "r12", "r13", "r14",
                                            "r15", "rip", "rflags"]}
        self.regs["rip"] = 0xFFF0
        self.regs["rflags"] = 0x2
        self.cs_base = 0xFFFF0000
        self.ds_base = 0
        self.pending_read: tuple[str, int] | None = None  # ("mmio"|"pio", size)

    def get8(self, name: str) -> int:
        i = REG8.index(name)
        v = self.regs[REG16[i & 3]]
        return (v >> 8) & 0xFF if i >= 4 else v & 0xFF

    def set8(self, name: str, val: int) -> None:
        i = REG8.index(name)
        r = REG16[i & 3]
        if i >= 4:
            self.regs[r] = (self.regs[r] & ~0xFF00) | (val & 0xFF) << 8
        else:
            self.regs[r] = (self.regs[r] & ~0xFF) | (val & 0xFF)


def kvm_arch_vcpu_ioctl_run(vcpu: Vcpu) -> int:
    """KVM_RUN: returns 0 with the exit written to the kvm_run page."""
    cpu = vcpu.cpu
    if cpu.pending_read is not None:
        kind, size = cpu.pending_read
        off = MMIO_DATA if kind == "mmio" else PIO_OFFSET
        val = int.from_bytes(vcpu.run_read(off, size), "little")
        if size == 1:
            cpu.set8("al", val)
        else:
            mask = (1 << 8 * size) - 1
            cpu.regs["rax"] = (cpu.regs["rax"] & ~mask) | val
        cpu.pending_read = None
    for _ in range(MAX_STEPS):
        ex = _step(vcpu, cpu)
        if ex is not None:
            if ex == K.KVM_EXIT_INTERNAL_ERROR:
                # handle_emulation_failure: run->internal says the emulator gave up.
                vcpu.write_exit(ex, "internal", K._kvm_run_internal(
                    suberror=K.KVM_INTERNAL_ERROR_EMULATION, ndata=0))
            else:
                vcpu.write_exit(ex)
            vcpu.kvm.sched.emit("kvm", "run-exit", vcpu=vcpu.vcpu_id, reason=ex)
            if ex == K.KVM_EXIT_MEMORY_FAULT:
                # api.rst: KVM_RUN fails with EFAULT and exit_reason MEMORY_FAULT is valid.
                raise kerr(errno.EFAULT, "KVM_RUN: KVM_EXIT_MEMORY_FAULT (private/shared "
                           "mismatch), see kvm_run.memory_fault")
            return 0
    vcpu.write_exit(K.KVM_EXIT_INTR)
    return 0


def _fetch(vcpu: Vcpu, cpu: RealModeCpu, n: int) -> bytes | None:
    ip = cpu.regs["rip"] & 0xFFFF
    got, ex = vcpu.access(cpu.cs_base + ip, n)
    return None if ex is not None else got


def _step(vcpu: Vcpu, cpu: RealModeCpu) -> int | None:
    code = _fetch(vcpu, cpu, 1)
    if code is None:
        return K.KVM_EXIT_INTERNAL_ERROR  # fetching from MMIO: emulation failure
    op = code[0]
    ip = cpu.regs["rip"] & 0xFFFF
    pre = 0  # prefix bytes before the opcode
    if op == 0x66:  # operand-size prefix: 32-bit operands in 16-bit code
        nxt, ex = vcpu.access(cpu.cs_base + ((ip + 1) & 0xFFFF), 1)
        if ex is not None or not nxt or nxt[0] not in (0xA1, 0xA3):
            return K.KVM_EXIT_INTERNAL_ERROR  # only mov eax, moffs / moffs, eax are modelled
        op, pre = nxt[0], 1

    def imm(n: int) -> int:
        b = vcpu.access(cpu.cs_base + ((ip + 1 + pre) & 0xFFFF), n)[0]
        return int.from_bytes(b, "little")

    def advance(n: int) -> None:
        cpu.regs["rip"] = (ip + pre + n) & 0xFFFF

    if op == 0x90:
        advance(1)
    elif op == 0xF4:
        advance(1)
        return K.KVM_EXIT_HLT
    elif 0xB0 <= op <= 0xB7:
        cpu.set8(REG8[op - 0xB0], imm(1))
        advance(2)
    elif 0xB8 <= op <= 0xBF:
        r = REG16[op - 0xB8]
        cpu.regs[r] = (cpu.regs[r] & ~0xFFFF) | imm(2)
        advance(3)
    elif op in (0xA0, 0xA1, 0xA2, 0xA3):
        size = 1 if op in (0xA0, 0xA2) else 4 if pre else 2
        gpa = cpu.ds_base + imm(2)
        advance(3)
        if op in (0xA2, 0xA3):
            val = cpu.get8("al") if size == 1 else cpu.regs["rax"] & ((1 << 8 * size) - 1)
            _, ex = vcpu.access(gpa, data=val.to_bytes(size, "little"))
            if ex is not None:
                return ex.reason
        else:
            got, ex = vcpu.access(gpa, size)
            if ex is not None:
                cpu.pending_read = ("mmio", size)
                return ex.reason
            if size == 1:
                cpu.set8("al", got[0])
            else:
                mask = (1 << 8 * size) - 1
                cpu.regs["rax"] = (cpu.regs["rax"] & ~mask) | int.from_bytes(got, "little")
    elif op in (0xE4, 0xE6, 0xEC, 0xEE):
        if op in (0xE4, 0xE6):
            port = imm(1)
            advance(2)
        else:
            port = cpu.regs["rdx"] & 0xFFFF
            advance(1)
        out = op in (0xE6, 0xEE)
        direction = K.KVM_EXIT_IO_OUT if out else K.KVM_EXIT_IO_IN
        vcpu.write_exit(K.KVM_EXIT_IO, "io", K._kvm_run_io(
            direction=direction, size=1, port=port, count=1, data_offset=PIO_OFFSET))
        if out:
            vcpu.run_write(PIO_OFFSET, bytes([cpu.get8("al")]))
        else:
            cpu.pending_read = ("pio", 1)
        return K.KVM_EXIT_IO
    elif op == 0xEB:
        rel = imm(1)
        advance(2 + (rel - 256 if rel & 0x80 else rel))
    elif op == 0xE9:
        rel = imm(2)
        advance(3 + (rel - 65536 if rel & 0x8000 else rel))
    else:
        return K.KVM_EXIT_INTERNAL_ERROR
    return None
