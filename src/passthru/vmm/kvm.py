"""KVM for a VMM: /dev/kvm, VMs and vCPUs, in the shape of rust-vmm's kvm-ioctls.

:class:`Kvm` is kvm-ioctls' ``Kvm`` (the /dev/kvm fd), :class:`Vm` its ``VmFd``, :class:`Vcpu`
its ``VcpuFd`` and :class:`VcpuExit` its ``VcpuExit`` enum. They call nothing but the Host
protocol (passthru.host.protocol) with the structs and request numbers of passthru.uapi.kvm,
so the same VMM code runs on SimHost (the model) and LinuxHost (the real kernel), and every
failure is the kernel's: OSError with its errno, unchanged.

Mapping to the kernel (virt/kvm/kvm_main.c, arch/x86/kvm/x86.c):

- ``Kvm``: open("/dev/kvm", O_RDWR | O_CLOEXEC); KVM_GET_API_VERSION, KVM_CHECK_EXTENSION,
  KVM_GET_VCPU_MMAP_SIZE, KVM_CREATE_VM.
- ``Vm``: KVM_CHECK_EXTENSION on the VM fd, KVM_CREATE_GUEST_MEMFD, KVM_SET_USER_MEMORY_REGION2
  (and the v1 ioctl), KVM_SET_MEMORY_ATTRIBUTES, KVM_CREATE_VCPU.
- ``Vcpu``: mmap of the vCPU fd (struct kvm_run, KVM_GET_VCPU_MMAP_SIZE bytes, mapped on first
  use), KVM_RUN, KVM_GET_REGS / KVM_SET_REGS. ``run()`` decodes the exit from the kvm_run page
  with ``host.peek`` using the ctypes layout of ``struct kvm_run``; a read exit (MMIO read,
  port IN) is completed by ``set_mmio_data``/``set_io_data`` before the next ``run()``, as
  the kernel's complete_userspace_io expects.

Ownership: a Kvm owns the VMs it created, a VM its vCPUs, guest_memfds and GuestMemory, a
guest_memfd its mappings; closing an owner closes those first (see passthru.vmm._resource).

Left out (kvm-ioctls has them): sregs, FPU, MSRs, CPUID, LAPIC, irqchip and irqfd/ioeventfd,
dirty logs, KVM_ENABLE_CAP, immediate_exit and signals, the coalesced-MMIO ring, and any
architecture but x86-64. The model's vCPU implements KVM_RUN, KVM_GET_REGS and KVM_SET_REGS
only.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from ..host.protocol import Host
from ..uapi import kvm as K
from ..uapi import linux as L
from ._resource import Resource
from .memory import PROT_RW, GuestMemfd, GuestMemory, Mapping

__all__ = ["Kvm", "Vm", "Vcpu", "VcpuExit", "EXIT_REASONS", "INTERNAL_ERRORS"]

# KVM_EXIT_* number -> name without the prefix ("MMIO", "IO", ...). KVM_EXIT_IO_IN/OUT are
# values of kvm_run.io.direction, not exit reasons.
EXIT_REASONS: dict[int, str] = {
    value: name.removeprefix("KVM_EXIT_")
    for name, value in vars(K).items()
    if name.startswith("KVM_EXIT_")
    and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
    and isinstance(value, int)
}

# Layout of struct kvm_run, from the ctypes mirror (never hand-counted offsets).
_RUN_STRUCT_SIZE = ctypes.sizeof(K.kvm_run)
_MMIO = type(K.kvm_run().mmio)  # the anonymous union's mmio struct
_MMIO_DATA_OFFSET: int = K.kvm_run.mmio.offset + _MMIO.data.offset
_MMIO_DATA_MAX: int = _MMIO.data.size

EHWPOISON = 133  # include/uapi/asm-generic/errno.h (not in every Python's errno module)

_HEX_FIELDS = frozenset({"phys_addr", "port", "flags", "gpa", "size", "hardware_reason"})

# KVM_INTERNAL_ERROR_* number -> name without the prefix (kvm_run.internal.suberror).
INTERNAL_ERRORS: dict[int, str] = {
    value: name.removeprefix("KVM_INTERNAL_ERROR_")
    for name, value in vars(K).items()
    if name.startswith("KVM_INTERNAL_ERROR_") and isinstance(value, int)
}

# What each suberror means (include/uapi/linux/kvm.h, Documentation/virt/kvm/api.rst).
_INTERNAL_ERROR_MEANING: dict[int, str] = {
    K.KVM_INTERNAL_ERROR_EMULATION: "KVM could not emulate an instruction (in real mode: "
    "code fetched from a guest address no memslot backs, e.g. the reset vector 0xfffffff0 "
    "before guest memory is set up there)",
    K.KVM_INTERNAL_ERROR_SIMUL_EX: "an exception occurred while delivering another exception",
    K.KVM_INTERNAL_ERROR_DELIVERY_EV: "an exit occurred while delivering an event to the "
    "guest",
    K.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "the hardware exited for a reason KVM does "
    "not handle",
}


@dataclass(frozen=True, repr=False)
class VcpuExit:
    """Why KVM_RUN returned: ``reason`` is the KVM_EXIT_* name without the prefix ("MMIO",
    "IO", "HLT", "MEMORY_FAULT", "INTERNAL_ERROR", ...), or the number if unknown; ``code`` is
    kvm_run.exit_reason. Only the fields of that exit are set; the others are None.

    - MMIO: ``phys_addr``, ``len``, ``is_write``; ``data`` the bytes written (None for a read:
      complete it with :meth:`Vcpu.set_mmio_data`).
    - IO: ``direction`` (KVM_EXIT_IO_IN 0 / OUT 1), ``size`` (access width in bytes), ``port``,
      ``count``; ``is_write`` (OUT); ``data`` the ``size * count`` bytes written (None for IN:
      complete it with :meth:`Vcpu.set_io_data`).
    - MEMORY_FAULT: ``flags`` (KVM_MEMORY_EXIT_FLAG_PRIVATE), ``gpa``, ``size``.
    - INTERNAL_ERROR: ``suberror`` (kvm_run.internal.suberror, a KVM_INTERNAL_ERROR_* value:
      1 EMULATION, 2 SIMUL_EX, 3 DELIVERY_EV, 4 UNEXPECTED_EXIT_REASON; ``suberror_name`` and
      ``explain()`` say which and what it means; the repr shows the name). A value outside
      that set means the kernel left the field unset (the model's emulation failure does
      today, leaving whatever the union held before), so it carries no information.
    - SYSTEM_EVENT: ``event_type``; FAIL_ENTRY and UNKNOWN: ``hardware_reason``.
    """

    reason: str | int
    code: int
    phys_addr: int | None = None
    len: int | None = None
    is_write: bool | None = None
    data: bytes | None = None
    direction: int | None = None
    size: int | None = None
    port: int | None = None
    count: int | None = None
    flags: int | None = None
    gpa: int | None = None
    suberror: int | None = None
    event_type: int | None = None
    hardware_reason: int | None = None

    @property
    def suberror_name(self) -> str | None:
        """The KVM_INTERNAL_ERROR_* name of ``suberror`` without the prefix ("EMULATION", ...),
        ``"unknown"`` for a value that is none of them, None when there is no suberror."""
        if self.suberror is None:
            return None
        return INTERNAL_ERRORS.get(self.suberror, "unknown")

    def explain(self) -> str:
        """One line on what this exit means (for an INTERNAL_ERROR, what the suberror says)."""
        if self.suberror is None:
            return repr(self)
        meaning = _INTERNAL_ERROR_MEANING.get(self.suberror)
        if meaning is None:
            known = ", ".join(f"{k} {v}" for k, v in sorted(INTERNAL_ERRORS.items()))
            meaning = (f"suberror {self.suberror:#x} is no KVM_INTERNAL_ERROR_* value ({known}): "
                       "the kernel did not set kvm_run.internal.suberror; a vCPU starts at "
                       "the reset vector 0xfffffff0: is there guest memory at its rip?")
        else:
            meaning = f"KVM_INTERNAL_ERROR_{self.suberror_name}: {meaning}"
        return f"KVM_EXIT_{self.reason}: {meaning}"

    def __repr__(self) -> str:
        parts = [repr(self.reason)]
        for f in fields(self)[2:]:
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name == "suberror":
                name = INTERNAL_ERRORS.get(v)
                shown = f"{v} ({name})" if name else f"{v:#x} (not a KVM_INTERNAL_ERROR_*)"
            else:
                shown = hex(v) if f.name in _HEX_FIELDS else repr(v)
            parts.append(f"{f.name}={shown}")
        return f"VcpuExit({', '.join(parts)})"

    def __str__(self) -> str:
        return repr(self) if self.suberror is None else f"{self!r}: {self.explain()}"


class Kvm(Resource):
    """The /dev/kvm fd (kvm-ioctls ``Kvm``)."""

    def __init__(self, host: Host, path: str = "/dev/kvm") -> None:
        super().__init__(host)
        self.fd = int(host.open(path, L.O_RDWR | L.O_CLOEXEC))
        self._run_size: int | None = None

    def __repr__(self) -> str:
        return f"<Kvm fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def api_version(self) -> int:
        """KVM_GET_API_VERSION (12 on every kernel since 2.6.22)."""
        self._check_open()
        return int(self.host.ioctl(self.fd, K.KVM_GET_API_VERSION, 0))

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm: 0 if ``cap`` (a KVM_CAP_*) is absent, else its
        value (often 1)."""
        self._check_open()
        return int(self.host.ioctl(self.fd, K.KVM_CHECK_EXTENSION, cap))

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE (asked once, then remembered)."""
        self._check_open()
        if self._run_size is None:
            self._run_size = int(self.host.ioctl(self.fd, K.KVM_GET_VCPU_MMAP_SIZE, 0))
        return self._run_size

    def create_vm(self, vm_type: int = K.KVM_X86_DEFAULT_VM) -> Vm:
        """KVM_CREATE_VM; the Vm remembers vcpu_mmap_size for its vCPUs, as VmFd does."""
        run_size = self.vcpu_mmap_size()
        fd = int(self.host.ioctl(self.fd, K.KVM_CREATE_VM, vm_type))
        return self._adopt(Vm(self.host, fd, run_size, vm_type))


class Vm(Resource):
    """A VM fd (kvm-ioctls ``VmFd``); made by :meth:`Kvm.create_vm`."""

    def __init__(self, host: Host, fd: int, run_size: int, vm_type: int = 0) -> None:
        super().__init__(host)
        self.fd = fd
        self.run_size = run_size
        self.vm_type = vm_type

    def __repr__(self) -> str:
        return f"<Vm fd={self.fd} type={self.vm_type}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (the answer for this VM's type): 0 if ``cap`` is
        absent, else its value."""
        self._check_open()
        return int(self.host.ioctl(self.fd, K.KVM_CHECK_EXTENSION, cap))

    def create_guest_memfd(self, size: int, flags: int = 0) -> GuestMemfd:
        """KVM_CREATE_GUEST_MEMFD (flags: GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_FLAG_INIT_SHARED)."""
        self._check_open()
        arg = K.kvm_create_guest_memfd(size=size, flags=flags)
        fd = int(self.host.ioctl(self.fd, K.KVM_CREATE_GUEST_MEMFD, arg))
        return self._adopt(GuestMemfd(self.host, fd, size, flags))

    def set_user_memory_region(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        flags: int = 0,
        guest_memfd: GuestMemfd | int | None = None,
        guest_memfd_offset: int = 0,
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION2. With ``guest_memfd`` (a GuestMemfd or a raw fd),
        KVM_MEM_GUEST_MEMFD is added to ``flags``. ``memory_size`` 0 deletes the slot."""
        self._check_open()
        gfd = 0
        if guest_memfd is not None:
            flags |= K.KVM_MEM_GUEST_MEMFD
            gfd = guest_memfd.fd if isinstance(guest_memfd, GuestMemfd) else guest_memfd
        arg = K.kvm_userspace_memory_region2(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
            guest_memfd_offset=guest_memfd_offset,
            guest_memfd=gfd & 0xFFFFFFFF,
        )
        self.host.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION2, arg)

    def set_user_memory_region_v1(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        flags: int = 0,
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION (the pre-guest_memfd struct)."""
        self._check_open()
        arg = K.kvm_userspace_memory_region(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        self.host.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, arg)

    def delete_memory_region(self, slot: int) -> None:
        """KVM_SET_USER_MEMORY_REGION2 with memory_size 0 (a missing slot is EINVAL)."""
        self.set_user_memory_region(slot, 0, 0)

    def set_memory_attributes(
        self, address: int, size: int, attributes: int, flags: int = 0
    ) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES (KVM_MEMORY_ATTRIBUTE_PRIVATE); ENOTTY where the VM type
        or kernel has no attributes (a default VM on 6.18)."""
        self._check_open()
        arg = K.kvm_memory_attributes(
            address=address, size=size, attributes=attributes, flags=flags
        )
        self.host.ioctl(self.fd, K.KVM_SET_MEMORY_ATTRIBUTES, arg)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU with id ``vcpu_id``; the Vcpu is owned by this VM (closed with it).
        EEXIST for an id already in use."""
        self._check_open()
        fd = int(self.host.ioctl(self.fd, K.KVM_CREATE_VCPU, vcpu_id))
        return self._adopt(Vcpu(self.host, fd, vcpu_id, self.run_size))

    def guest_memory(self, regions: Iterable[tuple[int, int]], **kw: Any) -> GuestMemory:
        """Build this VM's RAM: ``GuestMemory(self, regions, **kw)``; ``regions`` is a list of
        ``(gpa, size)`` pairs, e.g. ``vm.guest_memory([(0, 0x10000)])`` (one 64 KiB region at
        guest-physical 0). Keywords: ``guest_memfd``, ``gmem_flags``, ``first_slot``, ``name``
        (see :class:`GuestMemory`)."""
        return GuestMemory(self, regions, **kw)


class Vcpu(Resource):
    """A vCPU fd (kvm-ioctls ``VcpuFd``); made by :meth:`Vm.create_vcpu`.

    The kvm_run page is mmapped (MAP_SHARED, ``run_size`` bytes) on first use and unmapped by
    ``close``. ``last_exit`` is what the latest ``run()`` returned.
    """

    def __init__(self, host: Host, fd: int, vcpu_id: int, run_size: int) -> None:
        super().__init__(host)
        self.fd = fd
        self.vcpu_id = vcpu_id
        self.run_size = run_size
        self.last_exit: VcpuExit | None = None
        self._run: Mapping | None = None
        self._io_data_offset = 0

    def __repr__(self) -> str:
        return f"<Vcpu {self.vcpu_id} fd={self.fd}{' closed' if self.closed else ''}>"

    def _release(self) -> None:
        self.host.close(self.fd)

    @property
    def kvm_run(self) -> Mapping:
        """The mapping of this vCPU's struct kvm_run (mapped on first use)."""
        self._check_open()
        if self._run is None or self._run.closed:
            addr = self.host.mmap(0, self.run_size, PROT_RW, L.MAP_SHARED, self.fd, 0)
            self._run = self._adopt(Mapping(self.host, addr, self.run_size))
        return self._run

    def run(self) -> VcpuExit:
        """KVM_RUN, then decode kvm_run's exit.

        A MEMORY_FAULT exit is returned as an exit whether KVM_RUN returned 0 or, as the
        kernel does (Documentation/virt/kvm/api.rst), -1 with EFAULT/EHWPOISON; any other
        failure raises the OSError (kvm-ioctls' VcpuFd::run does the same).

        A vCPU starts at the reset vector (gpa 0xfffffff0 in real mode): with no guest memory
        there, the first fetch cannot be emulated and the exit is INTERNAL_ERROR (see
        :class:`VcpuExit`: ``str(exit)`` and ``exit.explain()`` say what its suberror means).
        """
        run_map = self.kvm_run
        self.last_exit = None
        try:
            self.host.ioctl(self.fd, K.KVM_RUN, 0)
        except OSError as e:
            # KVM_EXIT_MEMORY_FAULT is the one exit that comes with KVM_RUN returning -1
            # (EFAULT or EHWPOISON); with any other errno exit_reason is stale.
            if e.errno not in (errno.EFAULT, EHWPOISON):
                raise
            run = K.kvm_run.from_buffer_copy(run_map.read(0, _RUN_STRUCT_SIZE))
            if run.exit_reason != K.KVM_EXIT_MEMORY_FAULT:
                raise
        else:
            run = K.kvm_run.from_buffer_copy(run_map.read(0, _RUN_STRUCT_SIZE))
        self.last_exit = self._decode(run, run_map)
        return self.last_exit

    def _decode(self, run: K.kvm_run, run_map: Mapping) -> VcpuExit:
        code = int(run.exit_reason)
        reason: str | int = EXIT_REASONS.get(code, code)
        if code == K.KVM_EXIT_MMIO:
            m = run.mmio
            write = bool(m.is_write)
            n = int(m.len)
            return VcpuExit(
                reason,
                code,
                phys_addr=int(m.phys_addr),
                len=n,
                is_write=write,
                data=bytes(m.data)[:n] if write else None,
            )
        if code == K.KVM_EXIT_IO:
            io = run.io
            out = io.direction == K.KVM_EXIT_IO_OUT
            self._io_data_offset = int(io.data_offset)
            data = None
            if out:
                data = run_map.read(self._io_data_offset, int(io.size) * int(io.count))
            return VcpuExit(
                reason,
                code,
                direction=int(io.direction),
                size=int(io.size),
                port=int(io.port),
                count=int(io.count),
                is_write=out,
                data=data,
            )
        if code == K.KVM_EXIT_MEMORY_FAULT:
            mf = run.memory_fault
            return VcpuExit(reason, code, flags=int(mf.flags), gpa=int(mf.gpa), size=int(mf.size))
        if code == K.KVM_EXIT_INTERNAL_ERROR:
            return VcpuExit(reason, code, suberror=int(run.internal.suberror))
        if code == K.KVM_EXIT_SYSTEM_EVENT:
            return VcpuExit(reason, code, event_type=int(run.system_event.type))
        if code == K.KVM_EXIT_FAIL_ENTRY:
            return VcpuExit(
                reason, code, hardware_reason=int(run.fail_entry.hardware_entry_failure_reason)
            )
        if code == K.KVM_EXIT_UNKNOWN:
            return VcpuExit(reason, code, hardware_reason=int(run.hw.hardware_exit_reason))
        return VcpuExit(reason, code)

    def set_mmio_data(self, data: bytes) -> None:
        """Complete the last exit, an MMIO read: ``data`` (exactly its ``len`` bytes) goes to
        kvm_run.mmio.data, which KVM copies into the guest's register on the next run()."""
        ex = self.last_exit
        if ex is None or ex.code != K.KVM_EXIT_MMIO or ex.is_write:
            raise ValueError(f"set_mmio_data: the last exit is not an MMIO read: {ex!r}")
        if len(data) != ex.len or len(data) > _MMIO_DATA_MAX:
            raise ValueError(f"set_mmio_data: {len(data)} bytes for a {ex.len}-byte read")
        self.kvm_run.write(_MMIO_DATA_OFFSET, bytes(data))

    def set_io_data(self, data: bytes) -> None:
        """Complete the last exit, a port IN: ``data`` (``size * count`` bytes) goes to the
        kvm_run page at io.data_offset, which KVM copies into the guest on the next run()."""
        ex = self.last_exit
        if ex is None or ex.code != K.KVM_EXIT_IO or ex.is_write:
            raise ValueError(f"set_io_data: the last exit is not a port IN: {ex!r}")
        assert ex.size is not None and ex.count is not None
        if len(data) != ex.size * ex.count:
            raise ValueError(f"set_io_data: {len(data)} bytes for {ex.count} x {ex.size}")
        self.kvm_run.write(self._io_data_offset, bytes(data))

    def get_regs(self) -> K.kvm_regs:
        """KVM_GET_REGS: the general-purpose registers, rip and rflags, as a ``kvm_regs``."""
        self._check_open()
        regs = K.kvm_regs()
        self.host.ioctl(self.fd, K.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: K.kvm_regs | None = None, **values: int) -> None:
        """KVM_SET_REGS with ``regs``, or with the current registers updated by ``values``
        (``set_regs(rip=0x100, rax=1)`` reads, changes and writes back)."""
        self._check_open()
        known = {field[0] for field in K.kvm_regs._fields_}
        unknown = set(values) - known
        if unknown:
            raise TypeError(f"set_regs: no register(s) {sorted(unknown)} in kvm_regs")
        if regs is None:
            regs = self.get_regs()
        for name, value in values.items():
            setattr(regs, name, value)
        self.host.ioctl(self.fd, K.KVM_SET_REGS, regs)
