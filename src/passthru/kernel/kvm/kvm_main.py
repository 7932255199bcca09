"""/dev/kvm, VMs and vCPUs (virt/kvm/kvm_main.c, arch/x86/kvm/x86.c).

Object lifetime as in the kernel: the VM fd, every vCPU fd and every guest_memfd hold a
reference on the VM (``users_count``); the VM is destroyed when the last goes. The VM records
the creating process's mm (KVM pins current->mm) for hva-backed slots and registers an
mmu_notifier on it.

ioctls: one table per file, as kvm_dev_ioctl, kvm_vm_ioctl and kvm_vcpu_ioctl switch on the
request — :data:`KVM_DEV_IOCTLS` (an unknown request is EINVAL, kvm_arch_dev_ioctl's x86
default), :data:`KVM_VM_IOCTLS` and :data:`KVM_VCPU_IOCTLS` (ENOTTY). A VM or vCPU ioctl from
a process other than the VM's creator is EIO before any dispatch (``kvm->mm !=
current->mm``); a vCPU ioctl runs under ``vcpu->mutex``. Each handler reads validate
(copy_from_user, the argument's checks) → get (what it needs, referenced: the guest_memfd
file of a memslot, fget) → act → respond (an fd installed, a struct copied out) → put.
KVM_CHECK_EXTENSION answers from the profile.

Invariants: a VM lives while ``users_count`` > 0; vCPU ids are unique in a VM and below
KVM_MAX_VCPU_IDS; a vCPU lives until its VM is destroyed (not when its fd closes).
Units: addresses and sizes in bytes; ``VCPU_MMAP_PAGES`` in 4 KiB pages.
Locking (which lock protects which field):
- ``Kvm.vcpus``: ``kvm.lock`` (written by kvm_vm_ioctl_create_vcpu: asserted in
  :meth:`Kvm.add_vcpu`); read by the VM's last user at destroy.
- ``Kvm.attributes`` (kvm->mem_attr_array): written under ``slots_lock`` inside an mmu
  invalidation (asserted in :meth:`Kvm._set_attributes`); read by the fault path with
  xa_load under RCU (marked), and caught by the mmu_invalidate retry.
- ``Kvm._users`` (users_count): a refcount_t — atomic, release/acquire on the last put.
- ``Kvm.gmem_files``: model bookkeeping (the kernel's per-inode gmem_file_list), atomic.
- ``Kvm.memslots``: ``slots_lock`` and ``srcu`` (memslots.py); ``Kvm.mmu``: ``mmu_lock``
  (mmu.py).
- ``Vcpu.cpu`` (the register state, one tracked location): ``vcpu->mutex``, held by every
  vCPU ioctl (kvm_vcpu_ioctl: asserted in :meth:`VcpuFile._ioctl`). ``Vcpu.access`` is the
  model's direct guest access, not an ioctl: it touches guest memory only (mmu.py).
- ``Vcpu.run`` (the kvm_run pages): written by the vCPU's own ioctls under vcpu->mutex (and
  by the model-only ``Vcpu.access``); the VMM reads them through its mapping, shared memory
  without a lock, as in the kernel.
Leaves out: vCPU register state beyond a 16-bit real-mode CPU (emulate.py); IRQ chips; dirty
logs; KVM_CREATE_VM's fault points.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...extents import RangeMap
from ...sim import track
from ...sim.locks import Mutex, Srcu
from ...sim.track import Cell, TrackedDict, TrackedList
from ...uapi import kvm as K
from ...uapi import linux as L
from ...uapi import proposed as P
from ..fs.file import File, fput, no_such_ioctl
from ..fs.ioctl_table import IoctlTable
from ..init import initcall
from ..lockdep_assert import lockdep_assert_held, marked
from ..mm.filemap import PageCache
from .emulate import RealModeCpu, kvm_arch_vcpu_ioctl_run
from .guest_memfd import GmemFile, kvm_gmem_create, kvm_gmem_supported_flags
from .memslots import Memslot, Memslots
from .mmu import KvmExit, KvmMmu

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

PAGE = L.PAGE_SIZE
KVM_MAX_VCPU_IDS = 4096
VCPU_MMAP_PAGES = K.KVM_COALESCED_MMIO_PAGE_OFFSET + 1  # kvm_run, PIO page, coalesced MMIO
RUN_EXIT_REASON = K.kvm_run.exit_reason.offset  # the kernel's layout, from the uAPI mirror


def _kvm_arch_dev_ioctl(f: File, proc: Process, cmd: int, arg: UserArg) -> int:
    raise kerr(errno.EINVAL, f"ioctl {cmd:#x}: not a /dev/kvm ioctl (kvm_arch_dev_ioctl)")


KVM_DEV_IOCTLS = IoctlTable("/dev/kvm", _kvm_arch_dev_ioctl)
KVM_VM_IOCTLS = IoctlTable("kvm-vm", no_such_ioctl)
KVM_VCPU_IOCTLS = IoctlTable("kvm-vcpu", no_such_ioctl)


@initcall("device")  # module_init(vmx_init) / kvm_init
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


def _no_argument(arg: UserArg, what: str) -> None:
    if arg.as_int():
        raise kerr(errno.EINVAL, f"{what}: argument must be 0")


def _creator_only(kvm: Kvm, proc: Process, what: str) -> None:
    """kvm_vm_ioctl / kvm_vcpu_ioctl: ``if (kvm->mm != current->mm) return -EIO``."""
    if proc.mm is not kvm.mm:
        raise kerr(errno.EIO, f"{what} from a process other than the VM's creator")


# ----- /dev/kvm ---------------------------------------------------------------------------------


class KvmDevFile(File):
    kind = "kvm-dev"
    ioctl_table = KVM_DEV_IOCTLS

    def __init__(self, kernel: Kernel, flags: int) -> None:
        super().__init__(kernel, flags, "/dev/kvm")


@KVM_DEV_IOCTLS.handler(K.KVM_GET_API_VERSION)
def kvm_dev_get_api_version(f: KvmDevFile, proc: Process, arg: UserArg) -> int:
    _no_argument(arg, "KVM_GET_API_VERSION")
    return K.KVM_API_VERSION


@KVM_DEV_IOCTLS.handler(K.KVM_CREATE_VM)
def kvm_dev_ioctl_create_vm(f: KvmDevFile, proc: Process, arg: UserArg) -> int:
    kvm = Kvm(f.kernel, proc, arg.as_int())  # validates the type before creating anything
    file = KvmVmFile(kvm)  # takes its own reference
    kvm.put()  # the creation's reference: the VM file holds the only one now
    return proc.fd_install(file, cloexec=True)


@KVM_DEV_IOCTLS.handler(K.KVM_CHECK_EXTENSION)
def kvm_dev_check_extension(f: KvmDevFile, proc: Process, arg: UserArg) -> int:
    return check_extension(f.kernel, None, arg.as_int())


@KVM_DEV_IOCTLS.handler(K.KVM_GET_VCPU_MMAP_SIZE)
def kvm_dev_get_vcpu_mmap_size(f: KvmDevFile, proc: Process, arg: UserArg) -> int:
    _no_argument(arg, "KVM_GET_VCPU_MMAP_SIZE")
    return VCPU_MMAP_PAGES * PAGE


# ----- struct kvm ------------------------------------------------------------------------------


class Kvm:
    """struct kvm."""

    def __init__(self, kernel: Kernel, proc: Process, vm_type: int) -> None:
        prof = kernel.profile
        if vm_type >= 32 or not prof.kvm_vm_types & (1 << vm_type):
            raise kerr(errno.EINVAL, f"KVM_CREATE_VM: type {vm_type} not in supported "
                       f"types {prof.kvm_vm_types:#x}")
        self.kernel = kernel
        self.sched = kernel.sched
        self.mm = proc.mm  # kvm->mm: the creator's address space (not its fd table)
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
        # A ranged subscriber: memslots file their hva ranges (memslots.py, _insert/_erase).
        # Through a lambda, not the bound method: a scenario may patch KvmMmu.hva_invalidate
        # (kapi.PATCHABLE) after the VM exists.
        self.mn_id = self.mm.mmu_notifier_register(
            lambda start, end: self.mmu.hva_invalidate(start, end), ranged=True)
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
        """kvm_destroy_vm: the last user frees every slot and mapping (no locks needed for
        the VM's own state, but the mmu still zaps under mmu_lock)."""
        self.memslots.free_all()
        self.mmu.zap_all()
        for vcpu in self.vcpus.values():
            vcpu.free()
        self.vcpus.clear()
        self.mm.mmu_notifier_unregister(self.mn_id)
        self.kernel.track("kvm", -1)
        self.sched.emit("kvm", "destroy-vm", vm=self.vm_id)

    def add_vcpu(self, vcpu: Vcpu) -> None:
        """xa_insert(&kvm->vcpu_array, ...): kvm->lock held."""
        lockdep_assert_held(self.lock, "kvm_vm_ioctl_create_vcpu")
        self.vcpus[vcpu.vcpu_id] = vcpu

    def gmem_only(self, slot: Memslot) -> bool:
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
            self._set_attributes(start, end, attrs.attributes)
            self.mmu.invalidate_end()
        self.sched.emit("kvm", "attributes", start=start, end=end, attrs=attrs.attributes)

    def _set_attributes(self, start: int, end: int, attributes: int) -> None:
        """kvm_vm_set_mem_attributes' xa_store: slots_lock held, inside an invalidation."""
        lockdep_assert_held(self.slots_lock, "kvm_vm_set_mem_attributes")
        if attributes:
            self.attributes.set(start, end, attributes)
        else:
            self.attributes.remove(start, end)


# ----- the VM file ----------------------------------------------------------------------------


class KvmVmFile(File):
    kind = "kvm-vm"
    ioctl_table = KVM_VM_IOCTLS

    def __init__(self, kvm: Kvm) -> None:
        super().__init__(kvm.kernel, L.O_RDWR | L.O_CLOEXEC, f"kvm-vm{kvm.vm_id}")
        self.kvm = kvm.get()

    def release(self) -> None:
        self.kvm.put()

    def ioctl(self, proc: Process, cmd: int, arg: UserArg) -> int:
        """kvm_vm_ioctl: the creator's process only, then the table."""
        _creator_only(self.kvm, proc, "KVM ioctl")
        return super().ioctl(proc, cmd, arg)


@KVM_VM_IOCTLS.handler(K.KVM_CHECK_EXTENSION)
def kvm_vm_check_extension(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    return check_extension(f.kernel, f.kvm, arg.as_int())


@KVM_VM_IOCTLS.handler(K.KVM_SET_USER_MEMORY_REGION)
def kvm_vm_set_user_memory_region(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    v1 = arg.copy_from_user(K.kvm_userspace_memory_region)
    if v1.flags & ~(K.KVM_MEM_LOG_DIRTY_PAGES | K.KVM_MEM_READONLY):
        raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: flags {v1.flags:#x} need the "
                   "v2 ioctl")
    # struct kvm_userspace_memory_region is the head of ..._region2: the kernel copies it over
    mem = K.kvm_userspace_memory_region2()
    ctypes.memmove(ctypes.addressof(mem), ctypes.addressof(v1), ctypes.sizeof(v1))
    return kvm_vm_ioctl_set_memory_region(f.kvm, proc, mem, v2=False)


@KVM_VM_IOCTLS.handler(K.KVM_SET_USER_MEMORY_REGION2)
def kvm_vm_set_user_memory_region2(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    mem = arg.copy_from_user(K.kvm_userspace_memory_region2)
    return kvm_vm_ioctl_set_memory_region(f.kvm, proc, mem, v2=True)


def kvm_vm_ioctl_set_memory_region(kvm: Kvm, proc: Process,
                                   mem: K.kvm_userspace_memory_region2, v2: bool) -> int:
    """Get the guest_memfd file a new slot binds (fget, held for the call: it cannot be
    released under us; None when the fd is not open, which the bind step reports in the
    kernel's order), act under slots_lock, put. A delete never binds, so it gets nothing."""
    gmem = None
    if mem.flags & (K.KVM_MEM_GUEST_MEMFD | P.KVM_MEM_VFIO_DMABUF) and mem.memory_size:
        gmem = proc.fget_or_none(mem.guest_memfd)  # the guest_memfd, or the slot's dma-buf
    try:
        with kvm.slots_lock:
            kvm.memslots.set_memory_region(mem, v2, gmem)
    finally:
        if gmem is not None:
            fput(gmem)
    return 0


@KVM_VM_IOCTLS.handler(K.KVM_CREATE_GUEST_MEMFD)
def kvm_vm_create_guest_memfd(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    args = arg.copy_from_user(K.kvm_create_guest_memfd)
    return proc.fd_install(kvm_gmem_create(f.kvm, args.size, args.flags), cloexec=True)


@KVM_VM_IOCTLS.handler(K.KVM_SET_MEMORY_ATTRIBUTES, when=lambda p: p.kvm_memory_attributes)
def kvm_vm_set_memory_attributes(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    f.kvm.set_memory_attributes(arg.copy_from_user(K.kvm_memory_attributes))
    return 0


@KVM_VM_IOCTLS.handler(K.KVM_CREATE_VCPU)
def kvm_vm_ioctl_create_vcpu(f: KvmVmFile, proc: Process, arg: UserArg) -> int:
    kvm, vcpu_id = f.kvm, arg.as_int()
    if vcpu_id >= KVM_MAX_VCPU_IDS:
        raise kerr(errno.EINVAL, f"KVM_CREATE_VCPU: id {vcpu_id} >= KVM_MAX_VCPU_IDS")
    with kvm.lock:
        if len(kvm.vcpus) >= kvm.kernel.profile.kvm_max_vcpus:
            raise kerr(errno.EINVAL, "KVM_CREATE_VCPU: KVM_MAX_VCPUS reached")
        if vcpu_id in kvm.vcpus:
            raise kerr(errno.EEXIST, f"KVM_CREATE_VCPU: vCPU {vcpu_id} exists")
        vcpu = Vcpu(kvm, vcpu_id)
        kvm.add_vcpu(vcpu)
        try:
            return proc.fd_install(VcpuFile(vcpu), cloexec=True)
        except OSError:
            # kvm_put_xa_erase: a vCPU whose fd could not be installed is undone.
            del kvm.vcpus[vcpu_id]
            vcpu.free()
            raise


# ----- vCPUs -----------------------------------------------------------------------------------


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
        """The exit in kvm_run: run->mmio for MMIO, run->memory_fault for the rest."""
        if ex.reason == K.KVM_EXIT_MMIO:
            mmio = K._kvm_run_mmio(phys_addr=ex.gpa, len=ex.size, is_write=int(ex.is_write))
            mmio.data[:] = ex.data[:8].ljust(8, b"\0")
            self.write_exit(ex.reason, "mmio", mmio)
        else:
            self.write_exit(ex.reason, "memory_fault", K._kvm_run_memory_fault(
                flags=ex.flags, gpa=ex.gpa, size=ex.size))
        self.kvm.sched.emit("kvm", "exit", vcpu=self.vcpu_id, reason=ex.name, gpa=ex.gpa)

    def write_exit(self, reason: int, member: str | None = None,
                   body: ctypes.Structure | None = None) -> None:
        """Fill kvm_run: ``exit_reason`` and, for an exit that carries data, its ``member``
        of the exit union (``mmio``, ``io``, ``memory_fault``: the uAPI mirror's structs)."""
        self.run_write(RUN_EXIT_REASON, bytes(ctypes.c_uint32(reason)))
        if member is not None:
            assert body is not None
            self.run_write(getattr(K.kvm_run, member).offset, bytes(body))

    def free(self) -> None:
        self.run.truncate_range(0, VCPU_MMAP_PAGES * PAGE)

    def run_write(self, offset: int, data: bytes) -> None:
        """The kernel stores into the vCPU's kvm_run pages (checked like any access)."""
        for s, e, p in self.run.lookup(offset, offset + len(data)):
            self.kvm.kernel.phys.write(p, data[s - offset : e - offset], "kernel")

    def run_read(self, offset: int, n: int) -> bytes:
        return self.run.read(offset, n)


class VcpuFile(File):
    kind = "kvm-vcpu"
    ioctl_table = KVM_VCPU_IOCTLS

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
        """kvm_vcpu_ioctl: the creator's process only, then the table under vcpu->mutex."""
        _creator_only(self.kvm, proc, "vCPU ioctl")
        with self.vcpu.mutex:  # mutex_lock_killable(&vcpu->mutex)
            return self._ioctl(cmd, arg)

    def _ioctl(self, cmd: int, arg: UserArg) -> int:
        """The table, vcpu->mutex held."""
        lockdep_assert_held(self.vcpu.mutex, "kvm_vcpu_ioctl")
        return super().ioctl(arg.proc, cmd, arg)


@KVM_VCPU_IOCTLS.handler(K.KVM_RUN)
def kvm_vcpu_run(f: VcpuFile, proc: Process, arg: UserArg) -> int:
    _no_argument(arg, "KVM_RUN")
    track.write(f.vcpu.cpu)  # the run loop reads and writes the registers
    return kvm_arch_vcpu_ioctl_run(f.vcpu)


@KVM_VCPU_IOCTLS.handler(K.KVM_GET_REGS)
def kvm_vcpu_get_regs(f: VcpuFile, proc: Process, arg: UserArg) -> int:
    track.read(f.vcpu.cpu)
    regs = K.kvm_regs()
    for name, *_ in K.kvm_regs._fields_:
        setattr(regs, name, f.vcpu.cpu.regs.get(name, 0))
    arg.copy_to_user(regs)
    return 0


@KVM_VCPU_IOCTLS.handler(K.KVM_SET_REGS)
def kvm_vcpu_set_regs(f: VcpuFile, proc: Process, arg: UserArg) -> int:
    regs = arg.copy_from_user(K.kvm_regs)
    track.write(f.vcpu.cpu)
    for name, *_ in K.kvm_regs._fields_:
        f.vcpu.cpu.regs[name] = getattr(regs, name)
    return 0
