"""/dev/kvm, VMs and vCPUs (virt/kvm/kvm_main.c, arch/x86/kvm/x86.c).

Object lifetime as in the kernel: the VM fd, every vCPU fd and every guest_memfd hold a
reference on the VM (``users_count``); the VM is destroyed when the last goes. The VM records
the creating process's mm (KVM pins current->mm) for hva-backed slots and registers an
mmu_notifier on it.

ioctl dispatch follows kvm_dev_ioctl, kvm_vm_ioctl and kvm_vcpu_ioctl; answers to
KVM_CHECK_EXTENSION come from the profile.

Locking (which lock protects which field):
- ``kvm.lock`` (VM-wide): ``vcpus`` is written under it (kvm_vm_ioctl_create_vcpu); VM
  teardown reads it as the last user.
- ``slots_lock``: memslot updates (memslots.py) and ``attributes`` (kvm->mem_attr_array,
  written by kvm_vm_set_mem_attributes under slots_lock inside an mmu invalidation; read by
  the fault path with xa_load under RCU: marked, and caught by the mmu_invalidate retry).
- ``srcu``: memslot readers; ``mmu.mmu_lock``: the stage-2 tables (mmu.py).
- ``users_count`` is a refcount_t (atomic, release/acquire on the last put); ``gmem_files``
  is model bookkeeping (the kernel's per-inode gmem_file_list), kept atomic.
- ``Vcpu.mutex`` (vcpu->mutex): every vCPU ioctl runs under it (kvm_vcpu_ioctl), so the
  register state (``Vcpu.cpu``, one tracked location) is plain. ``Vcpu.access`` is the
  model's direct guest access, not an ioctl: it touches guest memory only (mmu.py).
Leaves out: vCPU register state and instruction emulation — a modelled vCPU performs
guest accesses given to it (:meth:`Vcpu.access`) and reports KVM exits; IRQ chips; dirty logs.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...extents import RangeMap
from ...sim import track
from ...sim.locks import Mutex, Srcu
from ...sim.track import Cell, TrackedDict, TrackedList
from ...uapi import kvm as K
from ...uapi import linux as L
from ..fs.file import File
from ..lockdep_assert import marked
from ..mm.filemap import PageCache
from .guest_memfd import GmemFile, kvm_gmem_create, kvm_gmem_supported_flags
from .memslots import Memslots
from .mmu import KvmExit, KvmMmu

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

PAGE = L.PAGE_SIZE
KVM_MAX_VCPU_IDS = 4096
VCPU_MMAP_PAGES = 3  # kvm_run + PIO page + coalesced MMIO ring (x86)


def kvm_init(kernel: Kernel) -> None:
    kernel.register_device("/dev/kvm", lambda proc, flags: KvmDevFile(kernel, flags))


def check_extension(kernel: Kernel, kvm: Kvm | None, cap: int) -> int:
    """kvm_vm_ioctl_check_extension_generic + kvm_vm_ioctl_check_extension (x86)."""
    prof = kernel.profile
    if cap in (K.KVM_CAP_USER_MEMORY, K.KVM_CAP_USER_MEMORY2, K.KVM_CAP_MEMORY_FAULT_INFO):
        return 1
    if cap == K.KVM_CAP_NR_MEMSLOTS:
        return prof.kvm_nr_memslots
    if cap == K.KVM_CAP_NR_VCPUS:
        return prof.kvm_nr_vcpus
    if cap == K.KVM_CAP_MAX_VCPUS:
        return prof.kvm_max_vcpus
    if cap == K.KVM_CAP_READONLY_MEM:
        return 1 if kvm is None or kvm.has_readonly_mem else 0
    if cap == K.KVM_CAP_GUEST_MEMFD:
        return 1 if kvm is None or kvm.supports_gmem else 0
    if cap == K.KVM_CAP_GUEST_MEMFD_FLAGS:
        return kvm_gmem_supported_flags(kvm)
    if cap == K.KVM_CAP_VM_TYPES:
        return prof.kvm_vm_types
    if cap == K.KVM_CAP_MEMORY_ATTRIBUTES:
        if not prof.kvm_memory_attributes:
            return 0
        return K.KVM_MEMORY_ATTRIBUTE_PRIVATE if kvm is None or kvm.has_private_mem else 0
    if cap == K.KVM_CAP_PRE_FAULT_MEMORY:
        return 1 if prof.kvm_pre_fault_memory else 0
    return 0


class KvmDevFile(File):
    kind = "kvm-dev"

    def __init__(self, kernel: Kernel, flags: int) -> None:
        super().__init__(kernel, flags, "/dev/kvm")

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        if cmd == K.KVM_GET_API_VERSION:
            if arg.as_int():
                raise kerr(errno.EINVAL, "KVM_GET_API_VERSION: argument must be 0")
            return K.KVM_API_VERSION
        if cmd == K.KVM_CREATE_VM:
            kvm = Kvm(self.kernel, proc, arg.as_int())
            f = KvmVmFile(kvm)
            kvm.put()  # the VM file holds the only reference now
            return proc.fd_install(f, cloexec=True)
        if cmd == K.KVM_CHECK_EXTENSION:
            return check_extension(self.kernel, None, arg.as_int())
        if cmd == K.KVM_GET_VCPU_MMAP_SIZE:
            if arg.as_int():
                raise kerr(errno.EINVAL, "KVM_GET_VCPU_MMAP_SIZE: argument must be 0")
            return VCPU_MMAP_PAGES * PAGE
        # kvm_arch_dev_ioctl's default on x86
        raise kerr(errno.EINVAL, f"ioctl {cmd:#x}: not a /dev/kvm ioctl (kvm_arch_dev_ioctl)")


class Kvm:
    """struct kvm."""

    def __init__(self, kernel: Kernel, proc: Process, vm_type: int) -> None:
        prof = kernel.profile
        if vm_type >= 32 or not prof.kvm_vm_types & (1 << vm_type):
            raise kerr(errno.EINVAL, f"KVM_CREATE_VM: type {vm_type} not in supported "
                       f"types {prof.kvm_vm_types:#x}")
        self.kernel = kernel
        self.sched = kernel.sched
        self.proc = proc
        self.mm = proc.mm
        self.vm_type = vm_type
        self.vm_id = kernel.next_id("vm")
        self.name = f"vm{self.vm_id}"
        self._users: Cell[int] = Cell(1, label=f"{self.name}.users_count", atomic=True)
        self.has_private_mem = vm_type != K.KVM_X86_DEFAULT_VM
        self.has_readonly_mem = vm_type in (K.KVM_X86_DEFAULT_VM, K.KVM_X86_SW_PROTECTED_VM)
        self.supports_gmem = True
        # x86 has a second (SMM) address space only with SMM emulation, which the model
        # (like the kvm_pvm host here) leaves out: one address space.
        self.nr_memslot_as_ids = 1
        self.lock = Mutex(self.sched, f"{self.name}.lock", "kvm->lock")
        self.slots_lock = Mutex(self.sched, f"{self.name}.slots_lock", "kvm->slots_lock")
        self.srcu = Srcu(self.sched, f"{self.name}.srcu")
        self.mmu = KvmMmu(self)
        self.memslots = Memslots(self)
        self.attributes: RangeMap[int] = RangeMap(label=f"{self.name}.mem_attr_array")
        self.gmem_files: list[GmemFile] = TrackedList(label=f"{self.name}.gmem_files",
                                                      atomic=True)
        self.vcpus: dict[int, Vcpu] = TrackedDict(label=f"{self.name}.vcpus")
        self.mm.mmu_notifier_register(self.mmu.hva_invalidate)
        kernel.track("kvm", +1)
        self.sched.emit("kvm", "create-vm", vm=self.vm_id, type=vm_type)

    @property
    def users_count(self) -> int:
        return self._users.peek()

    def get(self) -> Kvm:
        """kvm_get_kvm: refcount_inc."""
        self._users.set(self._users.get() + 1)
        return self

    def put(self) -> None:
        """kvm_put_kvm: refcount_dec_and_test; the last user destroys the VM."""
        n = self._users.get() - 1
        self._users.set(n)
        if n == 0:
            self.destroy()

    def destroy(self) -> None:
        """kvm_destroy_vm: drop every slot and mapping (the last user: no locks needed for
        the VM's own state, but the mmu still zaps under mmu_lock)."""
        for slot in list(self.memslots.by_id.values()):
            self.memslots._remove(slot)
            gmem = slot.get_gmem()
            if gmem is not None:
                gmem.unbind(slot)
        self.mmu.zap_all()
        for vcpu in self.vcpus.values():
            vcpu.free()
        self.vcpus.clear()
        self.mm.mmu_notifier_unregister(self.mmu.hva_invalidate)
        self.kernel.track("kvm", -1)
        self.sched.emit("kvm", "destroy-vm", vm=self.vm_id)

    def gmem_only(self, slot: Any) -> bool:
        """kvm_memslot_is_gmem_only: a non-CoCo VM's slot whose gmem the host can mmap."""
        gm = slot.get_gmem()
        return gm is not None and not self.has_private_mem and bool(
            gm.gflags & K.GUEST_MEMFD_FLAG_MMAP)

    def mem_is_private(self, gpa: int) -> bool:
        """kvm_mem_is_private: xa_load of mem_attr_array under RCU (a marked read)."""
        if not self.has_private_mem:
            return False
        with marked():
            attrs = self.attributes.lookup(gpa)
        return bool((attrs or 0) & K.KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def set_memory_attributes(self, attrs: K.kvm_memory_attributes) -> None:
        """kvm_vm_ioctl_set_mem_attributes."""
        what = "KVM_SET_MEMORY_ATTRIBUTES"
        supported = K.KVM_MEMORY_ATTRIBUTE_PRIVATE if self.has_private_mem else 0
        if attrs.flags:
            raise kerr(errno.EINVAL, f"{what}: flags {attrs.flags:#x} must be 0")
        if attrs.attributes & ~supported:
            raise kerr(errno.EINVAL, f"{what}: attributes {attrs.attributes:#x} not in "
                       f"{supported:#x} for VM type {self.vm_type}")
        if attrs.size == 0 or attrs.address + attrs.size >= 1 << 64:
            raise kerr(errno.EINVAL, f"{what}: size 0 or range overflows")
        if attrs.address & (PAGE - 1) or attrs.size & (PAGE - 1):
            raise kerr(errno.EINVAL, f"{what}: range not page aligned")
        start, end = attrs.address, attrs.address + attrs.size
        with self.slots_lock:
            self.mmu.invalidate_begin(start, end)
            if attrs.attributes:
                self.attributes.set(start, end, attrs.attributes)
            else:
                self.attributes.remove(start, end)
            self.mmu.invalidate_end()
        self.sched.emit("kvm", "attributes", start=start, end=end, attrs=attrs.attributes)


class KvmVmFile(File):
    kind = "kvm-vm"

    def __init__(self, kvm: Kvm) -> None:
        super().__init__(kvm.kernel, L.O_RDWR | L.O_CLOEXEC, f"kvm-vm{kvm.vm_id}")
        self.kvm = kvm.get()

    def release(self) -> None:
        self.kvm.put()

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        kvm = self.kvm
        if proc.mm is not kvm.mm:
            raise kerr(errno.EIO, "KVM ioctl from a process other than the VM's creator")
        if cmd == K.KVM_CHECK_EXTENSION:
            return check_extension(self.kernel, kvm, arg.as_int())
        if cmd in (K.KVM_SET_USER_MEMORY_REGION, K.KVM_SET_USER_MEMORY_REGION2):
            v2 = cmd == K.KVM_SET_USER_MEMORY_REGION2
            if v2:
                mem = arg.copy_from_user(K.kvm_userspace_memory_region2)
            else:
                v1 = arg.copy_from_user(K.kvm_userspace_memory_region)
                if v1.flags & ~(K.KVM_MEM_LOG_DIRTY_PAGES | K.KVM_MEM_READONLY):
                    raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: flags "
                               f"{v1.flags:#x} need the v2 ioctl")
                mem = K.kvm_userspace_memory_region2()
                ctypes.memmove(ctypes.addressof(mem), ctypes.addressof(v1), ctypes.sizeof(v1))
            with kvm.slots_lock:
                kvm.memslots.set_memory_region(mem, v2)
            return 0
        if cmd == K.KVM_CREATE_GUEST_MEMFD:
            args = arg.copy_from_user(K.kvm_create_guest_memfd)
            f = kvm_gmem_create(kvm, args.size, args.flags)
            return proc.fd_install(f, cloexec=True)
        if cmd == K.KVM_SET_MEMORY_ATTRIBUTES and self.kernel.profile.kvm_memory_attributes:
            kvm.set_memory_attributes(arg.copy_from_user(K.kvm_memory_attributes))
            return 0
        if cmd == K.KVM_CREATE_VCPU:
            return self._create_vcpu(proc, arg.as_int())
        raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: not a KVM VM ioctl")

    def _create_vcpu(self, proc: Process, vcpu_id: int) -> int:
        kvm = self.kvm
        if vcpu_id >= KVM_MAX_VCPU_IDS:
            raise kerr(errno.EINVAL, f"KVM_CREATE_VCPU: id {vcpu_id} >= KVM_MAX_VCPU_IDS")
        with kvm.lock:
            if len(kvm.vcpus) >= kvm.kernel.profile.kvm_max_vcpus:
                raise kerr(errno.EINVAL, "KVM_CREATE_VCPU: KVM_MAX_VCPUS reached")
            if vcpu_id in kvm.vcpus:
                raise kerr(errno.EEXIST, f"KVM_CREATE_VCPU: vCPU {vcpu_id} exists")
            vcpu = Vcpu(kvm, vcpu_id)
            kvm.vcpus[vcpu_id] = vcpu
            try:
                return proc.fd_install(VcpuFile(vcpu), cloexec=True)
            except OSError:
                # kvm_put_xa_erase: a vCPU whose fd could not be installed is undone.
                del kvm.vcpus[vcpu_id]
                vcpu.free()
                raise


class Vcpu:
    """struct kvm_vcpu, reduced to what guest memory access needs."""

    def __init__(self, kvm: Kvm, vcpu_id: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id
        self.who = f"vcpu:{kvm.name}.{vcpu_id}"
        size = VCPU_MMAP_PAGES * PAGE
        # The kvm_run area: kernel pages the VMM maps (not necessarily contiguous).
        self.run = PageCache(kvm.kernel, f"kvm_run:{self.who}")
        self.run.populate(0, size)
        from .emulate import RealModeCpu

        self.cpu = RealModeCpu()
        self.mutex = Mutex(kvm.sched, f"{self.who}.mutex", "&vcpu->mutex")
        track.uid_of(self.cpu, f"{self.who}.regs")

    def access(self, gpa: int, n: int = 0, data: bytes | None = None,
               private: bool | None = None) -> tuple[bytes, KvmExit | None]:
        """The guest reads ``n`` bytes (or writes ``data``) at ``gpa``.

        Returns (data read, None) when memory served it, or (b"", exit) when KVM_RUN would
        return to the VMM — the exit is also written into the vCPU's kvm_run page.
        """
        write = data is not None
        n = len(data) if data is not None else n
        out = b""
        pos = 0
        while pos < n:
            chunk = min(n - pos, PAGE - ((gpa + pos) & (PAGE - 1)))
            piece = None if data is None else data[pos : pos + chunk]
            got, ex = self.kvm.mmu.access(gpa + pos, chunk, write, piece, private, self.who)
            if ex is not None:
                self._report(ex)
                return out, ex
            out += got
            pos += chunk
        return out, None

    def _report(self, ex: KvmExit) -> None:
        from .emulate import RUN_EXIT_REASON, RUN_UNION

        self.run_write(RUN_EXIT_REASON, struct.pack("<I", ex.reason))
        if ex.reason == K.KVM_EXIT_MMIO:
            body = struct.pack("<Q8sIB", ex.gpa, ex.data[:8].ljust(8, b"\0"), ex.size,
                               int(ex.is_write))
        else:
            body = struct.pack("<QQQ", ex.flags, ex.gpa, ex.size)
        self.run_write(RUN_UNION, body)
        self.kvm.sched.emit("kvm", "exit", vcpu=self.vcpu_id, reason=ex.name, gpa=ex.gpa)

    def free(self) -> None:
        self.run.truncate_range(0, VCPU_MMAP_PAGES * PAGE)

    def run_write(self, offset: int, data: bytes) -> None:
        for s, e, p in self.run.lookup(offset, offset + len(data)):
            self.kvm.kernel.phys.data.write(p, data[s - offset : e - offset])

    def run_read(self, offset: int, n: int) -> bytes:
        return self.run.read(offset, n)


class VcpuFile(File):
    kind = "kvm-vcpu"

    def __init__(self, vcpu: Vcpu) -> None:
        super().__init__(vcpu.kvm.kernel, L.O_RDWR | L.O_CLOEXEC,
                         f"kvm-vcpu:{vcpu.kvm.vm_id}:{vcpu.vcpu_id}")
        self.vcpu = vcpu
        self.kvm = vcpu.kvm.get()
        self.i_mmap_writable = 0

    def mmap(self, proc: Process, vma: Vma) -> None:
        if vma.pgoff + (vma.end - vma.start) > VCPU_MMAP_PAGES * PAGE:
            raise kerr(errno.EINVAL, "mmap: past the vCPU's kvm_run area")

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        return self.vcpu.run.lookup(start, end)

    def release(self) -> None:
        # The vCPU itself lives until the VM is destroyed, as in the kernel.
        self.kvm.put()

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        if proc.mm is not self.kvm.mm:
            raise kerr(errno.EIO, "vCPU ioctl from a process other than the VM's creator")
        with self.vcpu.mutex:  # kvm_vcpu_ioctl: mutex_lock_killable(&vcpu->mutex)
            return self._ioctl(cmd, arg)

    def _ioctl(self, cmd: int, arg: UserArg) -> int:
        from .emulate import kvm_arch_vcpu_ioctl_run

        regs_loc = self.vcpu.cpu
        if cmd == K.KVM_RUN:
            if arg.as_int():
                raise kerr(errno.EINVAL, "KVM_RUN: argument must be 0")
            track.write(regs_loc)  # the run loop reads and writes the registers
            return kvm_arch_vcpu_ioctl_run(self.vcpu)
        if cmd == K.KVM_GET_REGS:
            track.read(regs_loc)
            regs = K.kvm_regs()
            for field in K.kvm_regs._fields_:
                setattr(regs, field[0], self.vcpu.cpu.regs.get(field[0], 0))
            arg.copy_to_user(regs)
            return 0
        if cmd == K.KVM_SET_REGS:
            regs = arg.copy_from_user(K.kvm_regs)
            track.write(regs_loc)
            for field in K.kvm_regs._fields_:
                self.vcpu.cpu.regs[field[0]] = getattr(regs, field[0])
            return 0
        raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: vCPU ioctl not modelled")
