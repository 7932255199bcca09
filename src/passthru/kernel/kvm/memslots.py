"""Memslots: guest-physical ranges backed by user memory or guest_memfd (virt/kvm/kvm_main.c,
kvm_set_memory_region and check_memory_region_flags; include/linux/kvm_host.h).

Invariants: slots of one address space never overlap in GPA; a gmem range is bound to at
most one slot. Units: bytes (the kernel counts pages; npages here is size >> 12).
Locking (which lock protects which field; asserted where the kernel asserts it):
- ``Memslots.by_id`` and ``Memslots.gpa`` (the memslot set): written only under
  ``kvm.slots_lock`` (kvm_set_memory_region: lockdep_assert_held); read under slots_lock
  (plain) or, by vCPU faults and the mmu_notifier walk, inside a ``kvm.srcu`` read section
  (srcu_dereference: a marked read). A deleted slot is freed only after synchronize_srcu — so
  a reader never sees a freed slot.
- ``Memslot.invalid`` (KVM_MEMSLOT_INVALID): written under slots_lock before the slot is
  unpublished; readers inside SRCU read it marked (the kernel publishes an invalid *copy*
  with rcu_assign_pointer; the model flips the flag of the one slot instead).
- ``Memslot.gmem`` (slot->gmem.file): WRITE_ONCE by kvm_gmem_bind/unbind/release,
  READ_ONCE/get_file_active by the fault path: marked on both sides, as in the kernel.
- ``Memslot.freed`` is the model's KASAN, not kernel state: :meth:`Memslot.touch` and the free
  are footprint-only accesses.
- The rest of a Memslot (base, npages, userspace_addr, flags, gmem_offset) is immutable once
  the slot is published, as in the kernel.
Leaves out: dirty bitmaps, KVM_MR_MOVE's arch work, the two-set memslot swap (one set here).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import kerr
from ...extents import RangeMap
from ...sim import track
from ...sim.track import TrackedDict
from ...uapi import kvm as K
from ...uapi import linux as L
from ..lockdep_assert import lockdep_assert_held, marked, observe

if TYPE_CHECKING:
    from .guest_memfd import Binding, GmemFile
    from .kvm_main import Kvm

PAGE = L.PAGE_SIZE
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
KVM_MR_CREATE, KVM_MR_DELETE, KVM_MR_MOVE, KVM_MR_FLAGS_ONLY = range(4)
# The fields of a Memslot that change after creation, as ranges of its tracked location.
F_INVALID = (0, 1)
F_GMEM = (1, 2)
F_FREED = (2, 3)


@dataclass(eq=False)
class Memslot(track.Tracked):
    kvm: Kvm
    id: int  # the uAPI slot number (as_id << 16 | id)
    as_id: int
    base_gpa: int
    npages: int
    userspace_addr: int
    flags: int
    gmem: GmemFile | None = None
    gmem_offset: int = 0
    invalid: bool = False
    freed: bool = False
    name: str = field(default="")

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.kvm.name}.memslot{self.id:#x}"
        self.track_init(self.name)

    def is_invalid(self) -> bool:
        """slot->flags & KVM_MEMSLOT_INVALID, read by an SRCU reader (marked)."""
        track.read_once(self, *F_INVALID)
        return self.invalid

    def get_gmem(self) -> GmemFile | None:
        """READ_ONCE(slot->gmem.file)."""
        track.read_once(self, *F_GMEM)
        return self.gmem

    def set_gmem(self, gmem: GmemFile | None) -> None:
        """WRITE_ONCE(slot->gmem.file, ...)."""
        track.write_once(self, *F_GMEM)
        self.gmem = gmem

    @property
    def end_gpa(self) -> int:
        return self.base_gpa + self.npages * PAGE

    def gpa_of(self, b: Binding, foff: int) -> int:
        return self.base_gpa + (foff - self.gmem_offset)

    def touch(self) -> None:
        """A reader dereferences the slot: after it was freed that is a use-after-free."""
        observe(self, *F_FREED)
        if self.freed:
            self.kvm.sched.violation(
                "use-after-free", f"vCPU reads kvm_memory_slot {self.id} after it was freed"
            )


class Memslots:
    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.by_id: TrackedDict[int, Memslot] = TrackedDict(label=f"{kvm.name}.memslots")
        self.gpa: list[RangeMap[Memslot]] = [
            RangeMap(label=f"{kvm.name}.memslots.as{i}.gfn_tree") for i in range(2)]

    def lookup(self, as_id: int, gpa: int) -> Memslot | None:
        """kvm_vcpu_gfn_to_memslot: an SRCU reader's srcu_dereference (marked)."""
        with marked():
            return self.gpa[as_id].lookup(gpa)

    def __len__(self) -> int:
        return len(self.by_id)

    def check_flags(self, flags: int) -> None:
        """check_memory_region_flags."""
        kvm = self.kvm
        valid = K.KVM_MEM_LOG_DIRTY_PAGES
        if kvm.supports_gmem:
            valid |= K.KVM_MEM_GUEST_MEMFD
        if flags & K.KVM_MEM_GUEST_MEMFD:
            valid &= ~K.KVM_MEM_LOG_DIRTY_PAGES  # dirty logging of gmem is not supported
        if kvm.has_readonly_mem and not flags & K.KVM_MEM_GUEST_MEMFD:
            valid |= K.KVM_MEM_READONLY
        if flags & ~valid:
            raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: flags {flags:#x} not in "
                       f"{valid:#x} (check_memory_region_flags)")

    def set_memory_region(self, mem: K.kvm_userspace_memory_region2, v2: bool) -> None:
        """kvm_set_memory_region: every check in the kernel's order, then the change."""
        kvm = self.kvm
        lockdep_assert_held(kvm.slots_lock, "kvm_set_memory_region")
        what = "KVM_SET_USER_MEMORY_REGION2" if v2 else "KVM_SET_USER_MEMORY_REGION"
        self.check_flags(mem.flags)
        as_id, sid = mem.slot >> 16, mem.slot & 0xFFFF
        size, gpa, uaddr = mem.memory_size, mem.guest_phys_addr, mem.userspace_addr
        if size & (PAGE - 1):
            raise kerr(errno.EINVAL, f"{what}: memory_size {size:#x} not page aligned")
        if gpa & (PAGE - 1):
            raise kerr(errno.EINVAL, f"{what}: guest_phys_addr {gpa:#x} not page aligned")
        if uaddr & (PAGE - 1) or uaddr + size > 1 << 47:
            raise kerr(errno.EINVAL, f"{what}: userspace_addr {uaddr:#x} not page aligned "
                       "or not a user range (access_ok)")
        if mem.flags & K.KVM_MEM_GUEST_MEMFD and (
            mem.guest_memfd_offset & (PAGE - 1) or mem.guest_memfd_offset + size >= 1 << 64
        ):
            raise kerr(errno.EINVAL, f"{what}: guest_memfd_offset {mem.guest_memfd_offset:#x} "
                       "not page aligned or overflowing")
        if as_id >= kvm.nr_memslot_as_ids or sid >= kvm.kernel.profile.kvm_nr_memslots:
            raise kerr(errno.EINVAL, f"{what}: slot {mem.slot:#x} out of range")
        if gpa + size >= 1 << 64:
            raise kerr(errno.EINVAL, f"{what}: guest_phys_addr + memory_size overflows")
        if size // PAGE > KVM_MEM_MAX_NR_PAGES:
            raise kerr(errno.EINVAL, f"{what}: memory_size {size:#x} above KVM_MEM_MAX_NR_PAGES")
        old = self.by_id.get(mem.slot)
        if size == 0:
            if old is None:
                raise kerr(errno.EINVAL, f"{what}: deleting slot {mem.slot:#x} that does not exist")
            self.delete(old)
            return
        npages = size // PAGE
        if old is None:
            change = KVM_MR_CREATE
        else:
            if (mem.flags | old.flags) & K.KVM_MEM_GUEST_MEMFD:
                raise kerr(errno.EINVAL, f"{what}: guest_memfd slots are immutable (delete it)")
            if (uaddr != old.userspace_addr or npages != old.npages
                    or (mem.flags ^ old.flags) & K.KVM_MEM_READONLY):
                raise kerr(errno.EINVAL, f"{what}: slot {mem.slot:#x} may only move or "
                           "change flags")
            if gpa != old.base_gpa:
                change = KVM_MR_MOVE
            elif mem.flags != old.flags:
                change = KVM_MR_FLAGS_ONLY
            else:
                return
        if change in (KVM_MR_CREATE, KVM_MR_MOVE):
            for _, _, other in self.gpa[as_id].overlapping(gpa, gpa + size):
                if other is not old:
                    raise kerr(errno.EEXIST, f"{what}: [{gpa:#x}, {gpa + size:#x}) overlaps "
                               f"slot {other.id:#x} at [{other.base_gpa:#x}, {other.end_gpa:#x})")
        if gpa + size > 1 << kvm.kernel.profile.kvm_max_gpa_bits:
            raise kerr(errno.EINVAL, f"{what}: [{gpa:#x}, {gpa + size:#x}) beyond the largest "
                       "guest frame (kvm_arch_prepare_memory_region)")
        if kvm.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, f"{what}: kzalloc of the memslot failed (injected)")
        new = Memslot(kvm, mem.slot, as_id, gpa, npages, uaddr, mem.flags)
        if mem.flags & K.KVM_MEM_GUEST_MEMFD:
            from .guest_memfd import GmemFile

            file = kvm.proc.fds.get(mem.guest_memfd)
            if file is None:
                raise kerr(errno.EBADF, f"{what}: guest_memfd {mem.guest_memfd} is not an open fd")
            if not isinstance(file, GmemFile):
                raise kerr(errno.EINVAL, f"{what}: fd {mem.guest_memfd} is not a guest_memfd")
            file.bind(new, mem.guest_memfd_offset)
        if old is not None:
            self._remove(old)
        self._insert(new)
        kvm.sched.emit("kvm", "memslot", slot=mem.slot, gpa=gpa, size=size, flags=mem.flags)

    def _insert(self, slot: Memslot) -> None:
        self.by_id[slot.id] = slot
        self.gpa[slot.as_id].set(slot.base_gpa, slot.end_gpa, slot)
        self.kvm.kernel.track("memslot", +1)

    def _remove(self, slot: Memslot) -> None:
        """Unpublish ``slot`` and flush its mappings (KVM_MR_MOVE, FLAGS_ONLY; VM teardown)."""
        del self.by_id[slot.id]
        self.gpa[slot.as_id].remove(slot.base_gpa, slot.end_gpa)
        self.kvm.mmu.flush_shadow_memslot(slot)
        self.kvm.kernel.track("memslot", -1)

    def delete(self, slot: Memslot) -> None:
        """KVM_MR_DELETE: invalidate, wait for SRCU readers, zap, free."""
        kvm = self.kvm
        lockdep_assert_held(kvm.slots_lock, "kvm_set_memslot")
        kvm.sched.point(f"{kvm.name}.memslot:{slot.id}", "w")
        track.write(slot, *F_INVALID)
        slot.invalid = True
        del self.by_id[slot.id]
        self.gpa[slot.as_id].remove(slot.base_gpa, slot.end_gpa)
        if "kvm.memslot_delete_skips_srcu_sync" not in kvm.kernel.profile.bugs:
            kvm.srcu.synchronize()
        kvm.mmu.flush_shadow_memslot(slot)
        gmem = slot.get_gmem()
        if gmem is not None:
            gmem.unbind(slot)
        observe(slot, *F_FREED, write=True)
        slot.freed = True
        kvm.kernel.track("memslot", -1)
        kvm.sched.emit("kvm", "memslot-delete", slot=slot.id)

    def hva_slots(self, start: int, end: int) -> list[Memslot]:
        """Slots whose user memory overlaps hva ``[start, end)`` (the mmu_notifier walk,
        kvm_handle_hva_range: the caller is inside a ``kvm.srcu`` read section)."""
        with marked():
            return [s for s in self.by_id.values()
                    if s.userspace_addr < end and start < s.userspace_addr + s.npages * PAGE]
