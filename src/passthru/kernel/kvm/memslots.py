"""Memslots: guest-physical ranges backed by user memory or guest_memfd (virt/kvm/kvm_main.c:
kvm_set_memory_region, check_memory_region_flags, kvm_set_memslot, kvm_free_memslots;
include/linux/kvm_host.h).

kvm_set_memory_region reads check → classify → commit, as in the kernel:
- :meth:`Memslots.check` — check_memory_region_flags and the general sanity checks of the
  request alone (alignment, access_ok, the slot id, overflow, KVM_MEM_MAX_NR_PAGES);
- :meth:`Memslots.classify` — against the current slot: KVM_MR_DELETE, KVM_MR_CREATE,
  KVM_MR_MOVE, KVM_MR_FLAGS_ONLY or nothing to do, with the checks of that change
  (guest_memfd slots are immutable, only base_gfn or flags may change, no overlap);
- :meth:`Memslots.commit` — kvm_set_memslot: prepare (the arch's largest guest frame),
  allocate the new slot, bind its guest_memfd, then the change itself.
DELETE and MOVE take the old slot away from readers the one way (:meth:`Memslots._retire`:
invalid, unpublished, synchronize_srcu, zapped, freed); VM destruction frees every slot
through the same :meth:`Memslots._free` (kvm_free_memslots). The guest_memfd file arrives
resolved and referenced by the ioctl (kvm_main.py), as fdget would give it.

Invariants: slots of one address space never overlap in GPA; a gmem range is bound to at
most one slot; a reader inside ``kvm.srcu`` never sees a freed slot (a slot is freed only
after synchronize_srcu, or by the VM's last user).
Units: ``base_gpa``, ``userspace_addr``, ``gmem_offset`` and every size are bytes; ``npages``
counts 4 KiB pages (the kernel's npages; its base_gfn is ``base_gpa >> 12`` here).
Locking (which lock protects which field; asserted where the kernel asserts it):
- ``Memslots.by_id`` and ``Memslots.gpa`` (the memslot set): written under ``kvm.slots_lock``
  (kvm_set_memory_region and kvm_set_memslot assert it), or by the VM's last user
  (kvm_destroy_vm); read under slots_lock (plain) or inside a ``kvm.srcu`` read section by
  vCPU faults and the mmu_notifier walk (srcu_dereference: marked).
- ``Memslot.invalid`` (KVM_MEMSLOT_INVALID): written under slots_lock before the slot is
  unpublished; readers inside SRCU read it marked (the kernel publishes an invalid *copy*
  with rcu_assign_pointer; the model flips the flag of the one slot instead).
- ``Memslot.gmem`` (slot->gmem.file): WRITE_ONCE under the file's invalidate_lock held for
  write (asserted in :meth:`Memslot.set_gmem`), READ_ONCE by the fault path: marked.
- ``Memslot.freed`` is the model's KASAN, not kernel state: :meth:`Memslot.touch` and the free
  are footprint-only accesses.
- The rest of a Memslot (base_gpa, npages, userspace_addr, flags, gmem_offset) is immutable
  once the slot is published, as in the kernel.
Leaves out: dirty bitmaps, KVM_MR_MOVE's arch work, the two-set memslot swap (one set here),
the temporary invalid copy's allocation (no fault point for it).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import kerr
from ...extents import RangeMap
from ...sim import kinds, track
from ...sim.track import TrackedDict
from ...uapi import kvm as K
from ...uapi import linux as L
from ...uapi import proposed as P
from ..fs.file import File
from ..lockdep_assert import lockdep_assert_held, lockdep_assert_held_write, marked, observe
from ..profile import KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC
from .dmabuf_slot import KvmDmabufBinding, kvm_dmabuf_bind
from .guest_memfd import Binding, GmemFile

if TYPE_CHECKING:
    from .kvm_main import Kvm

PAGE = L.PAGE_SIZE
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
KVM_MR_CREATE, KVM_MR_DELETE, KVM_MR_MOVE, KVM_MR_FLAGS_ONLY = range(4)
# The fields of a Memslot that change after creation, as ranges of its tracked location.
F_INVALID = (0, 1)
F_GMEM = (1, 2)
F_FREED = (2, 3)

# A vCPU dereferenced a kvm_memory_slot after it was freed (Memslot.touch).
USE_AFTER_FREE = kinds.register("use-after-free", "kvm")


@dataclass(eq=False)
class Memslot(track.Tracked):
    kvm: Kvm
    id: int  # the uAPI slot number (as_id << 16 | id)
    as_id: int
    base_gpa: int  # bytes
    npages: int  # 4 KiB pages
    userspace_addr: int
    flags: int
    gmem: GmemFile | None = None
    gmem_offset: int = 0  # bytes into the guest_memfd
    dmabuf: KvmDmabufBinding | None = None  # a KVM_MEM_VFIO_DMABUF slot's importer side
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
        """WRITE_ONCE(slot->gmem.file, ...): the file being bound or unbound holds its
        invalidate_lock for write (kvm_gmem_bind, kvm_gmem_unbind, kvm_gmem_release)."""
        file = gmem if gmem is not None else self.gmem
        if file is not None:
            lockdep_assert_held_write(file.invalidate_lock, "kvm_gmem_bind/unbind")
        track.write_once(self, *F_GMEM)
        self.gmem = gmem

    @property
    def end_gpa(self) -> int:
        return self.base_gpa + self.npages * PAGE

    @property
    def hva_range(self) -> tuple[int, int]:
        """The slot's user memory ``[userspace_addr, + size)``, as the mmu_notifier files it."""
        return self.userspace_addr, self.userspace_addr + self.npages * PAGE

    def gpa_of(self, b: Binding, foff: int) -> int:
        return self.base_gpa + (foff - self.gmem_offset)

    def touch(self) -> None:
        """A reader dereferences the slot: after it was freed that is a use-after-free."""
        observe(self, *F_FREED)
        if self.freed:
            self.kvm.sched.violation(
                USE_AFTER_FREE, f"vCPU reads kvm_memory_slot {self.id} after it was freed"
            )


@dataclass(frozen=True)
class Change:
    """A classified kvm_set_memory_region request: which change, to which slot."""

    kind: int  # KVM_MR_*
    old: Memslot | None
    slot: int  # the uAPI slot number
    as_id: int
    base_gpa: int  # bytes
    npages: int  # 4 KiB pages
    userspace_addr: int
    flags: int
    guest_memfd: int  # the fd number, for messages (the file itself comes resolved)
    gmem_offset: int  # bytes


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

    def hva_slots(self, start: int, end: int) -> list[Memslot]:
        """Slots whose user memory overlaps hva ``[start, end)`` (the mmu_notifier walk,
        kvm_handle_hva_range: the caller is inside a ``kvm.srcu`` read section)."""
        with marked():
            return [s for s in self.by_id.values()
                    if s.userspace_addr < end and start < s.userspace_addr + s.npages * PAGE]

    # ----- kvm_set_memory_region: check → classify → commit ---------------------------------
    def set_memory_region(self, mem: K.kvm_userspace_memory_region2, v2: bool,
                          gmem: File | None = None) -> None:
        """kvm_set_memory_region, slots_lock held. ``gmem`` is the file at
        ``mem.guest_memfd`` (referenced by the caller for the call), None when that fd is
        not open; it is only looked at where the kernel's kvm_gmem_bind would fget it."""
        lockdep_assert_held(self.kvm.slots_lock, "kvm_set_memory_region")
        what = "KVM_SET_USER_MEMORY_REGION2" if v2 else "KVM_SET_USER_MEMORY_REGION"
        self.check(mem, what)
        change = self.classify(mem, what)
        if change is not None:
            self.commit(change, gmem, what)

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
        if kvm.kernel.profile.kvm_dmabuf_memslot:
            valid |= P.KVM_MEM_VFIO_DMABUF
            if flags & P.KVM_MEM_VFIO_DMABUF:  # MMIO: no gmem, dirty logging or read-only
                valid &= ~(K.KVM_MEM_GUEST_MEMFD | K.KVM_MEM_LOG_DIRTY_PAGES
                           | K.KVM_MEM_READONLY)
        if flags & ~valid:
            raise kerr(errno.EINVAL, f"KVM_SET_USER_MEMORY_REGION: flags {flags:#x} not in "
                       f"{valid:#x} (check_memory_region_flags)")

    def check(self, mem: K.kvm_userspace_memory_region2, what: str) -> None:
        """The checks of the request alone, in the kernel's order (all EINVAL)."""
        kvm = self.kvm
        self.check_flags(mem.flags)
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
        if mem.flags & P.KVM_MEM_VFIO_DMABUF and mem.guest_memfd_offset:
            raise kerr(errno.EINVAL, f"{what}: a dma-buf slot starts at offset 0 of the buffer "
                       f"(guest_memfd_offset {mem.guest_memfd_offset:#x})")
        as_id, sid = mem.slot >> 16, mem.slot & 0xFFFF
        if as_id >= kvm.nr_memslot_as_ids or sid >= kvm.kernel.profile.kvm_nr_memslots:
            raise kerr(errno.EINVAL, f"{what}: slot {mem.slot:#x} out of range")
        if gpa + size >= 1 << 64:
            raise kerr(errno.EINVAL, f"{what}: guest_phys_addr + memory_size overflows")
        if size // PAGE > KVM_MEM_MAX_NR_PAGES:
            raise kerr(errno.EINVAL, f"{what}: memory_size {size:#x} above KVM_MEM_MAX_NR_PAGES")

    def classify(self, mem: K.kvm_userspace_memory_region2, what: str) -> Change | None:
        """Which change the request makes to the current slot (None: nothing to change),
        with the checks that depend on it."""
        size, gpa, uaddr = mem.memory_size, mem.guest_phys_addr, mem.userspace_addr
        old = self.by_id.get(mem.slot)
        npages = size // PAGE
        if size == 0:
            if old is None:
                raise kerr(errno.EINVAL, f"{what}: deleting slot {mem.slot:#x} that does not exist")
            kind = KVM_MR_DELETE
        elif old is None:
            kind = KVM_MR_CREATE
        else:
            if (mem.flags | old.flags) & (K.KVM_MEM_GUEST_MEMFD | P.KVM_MEM_VFIO_DMABUF):
                raise kerr(errno.EINVAL, f"{what}: guest_memfd and dma-buf slots are immutable "
                           "(delete it)")
            if (uaddr != old.userspace_addr or npages != old.npages
                    or (mem.flags ^ old.flags) & K.KVM_MEM_READONLY):
                raise kerr(errno.EINVAL, f"{what}: slot {mem.slot:#x} may only move or "
                           "change flags")
            if gpa != old.base_gpa:
                kind = KVM_MR_MOVE
            elif mem.flags != old.flags:
                kind = KVM_MR_FLAGS_ONLY
            else:
                return None
        as_id = mem.slot >> 16
        if kind in (KVM_MR_CREATE, KVM_MR_MOVE):
            for _, _, other in self.gpa[as_id].overlapping(gpa, gpa + size):
                if other is not old:
                    raise kerr(errno.EEXIST, f"{what}: [{gpa:#x}, {gpa + size:#x}) overlaps "
                               f"slot {other.id:#x} at [{other.base_gpa:#x}, {other.end_gpa:#x})")
        return Change(kind, old, mem.slot, as_id, gpa, npages, uaddr, mem.flags,
                      mem.guest_memfd, mem.guest_memfd_offset)

    def commit(self, ch: Change, gmem: File | None, what: str) -> None:
        """kvm_set_memslot: prepare, allocate and bind the new slot, then make the change.
        Every failure comes before anything changed."""
        kvm = self.kvm
        if ch.kind == KVM_MR_DELETE:
            assert ch.old is not None
            self.delete(ch.old)
            return
        end = ch.base_gpa + ch.npages * PAGE
        if end > 1 << kvm.kernel.profile.kvm_max_gpa_bits:
            raise kerr(errno.EINVAL, f"{what}: [{ch.base_gpa:#x}, {end:#x}) beyond the largest "
                       "guest frame (kvm_arch_prepare_memory_region)")
        if kvm.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, f"{what}: kzalloc of the memslot failed (injected)")
        new = Memslot(kvm, ch.slot, ch.as_id, ch.base_gpa, ch.npages, ch.userspace_addr,
                      ch.flags)
        if ch.flags & K.KVM_MEM_GUEST_MEMFD:
            # kvm_gmem_bind: fget(fd) is EBADF, another kind of file EINVAL.
            if gmem is None:
                raise kerr(errno.EBADF, f"{what}: guest_memfd {ch.guest_memfd} is not an open fd")
            if not isinstance(gmem, GmemFile):
                raise kerr(errno.EINVAL, f"{what}: fd {ch.guest_memfd} is not a guest_memfd")
            gmem.bind(new, ch.gmem_offset)
        if ch.flags & P.KVM_MEM_VFIO_DMABUF:
            new.dmabuf = kvm_dmabuf_bind(new, gmem, ch.guest_memfd, what)
        if ch.kind == KVM_MR_MOVE:
            assert ch.old is not None
            self._retire(ch.old)  # kvm_invalidate_memslot, then the new slot replaces it
            self._insert(new)
        elif ch.kind == KVM_MR_FLAGS_ONLY:
            assert ch.old is not None
            self._erase(ch.old)  # kvm_replace_memslot(old, new): readers see one or the other
            self._insert(new)
            self._grace_period()
            self._free(ch.old)
        else:
            self._insert(new)
        kvm.sched.emit("kvm", "memslot", slot=ch.slot, gpa=ch.base_gpa,
                       size=ch.npages * PAGE, flags=ch.flags)

    def delete(self, slot: Memslot) -> None:
        """KVM_MR_DELETE: invalidate, wait for SRCU readers, zap, free."""
        lockdep_assert_held(self.kvm.slots_lock, "kvm_set_memslot")
        self._retire(slot)
        self.kvm.sched.emit("kvm", "memslot-delete", slot=slot.id)

    def free_all(self) -> None:
        """kvm_free_memslots, from kvm_destroy_vm: the VM's last user frees every slot (no
        reader can exist, so no lock and no grace period)."""
        for slot in list(self.by_id.values()):
            self._erase(slot)
            self._free(slot)

    # ----- the pieces: publish, unpublish, wait for readers, free ------------------------------
    def _insert(self, slot: Memslot) -> None:
        """kvm_replace_memslot(NULL, slot): publish ``slot`` to readers."""
        self.by_id[slot.id] = slot
        self.gpa[slot.as_id].set(slot.base_gpa, slot.end_gpa, slot)
        if not slot.flags & P.KVM_MEM_VFIO_DMABUF:  # a dma-buf slot has no user memory
            self.kvm.mm.notifiers.add_range(self.kvm.mn_id, (slot.as_id, slot.id),
                                            *slot.hva_range)
        self.kvm.kernel.track("memslot", +1)

    def _erase(self, slot: Memslot) -> None:
        """kvm_replace_memslot(slot, NULL): unpublish ``slot`` (readers may still hold it)."""
        del self.by_id[slot.id]
        self.gpa[slot.as_id].remove(slot.base_gpa, slot.end_gpa)
        self.kvm.mm.notifiers.remove_range(self.kvm.mn_id, (slot.as_id, slot.id),
                                           *slot.hva_range)

    def _grace_period(self) -> None:
        """kvm_swap_active_memslots' synchronize_srcu: every reader that could have found an
        unpublished slot is gone."""
        if not self.kvm.kernel.profile.has_bug(KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC):
            self.kvm.srcu.synchronize()

    def _retire(self, slot: Memslot) -> None:
        """DELETE and MOVE: mark ``slot`` invalid, unpublish it, wait for readers, free it."""
        kvm = self.kvm
        kvm.sched.point(f"{kvm.name}.memslot:{slot.id}", "w")
        track.write(slot, *F_INVALID)
        slot.invalid = True
        self._erase(slot)
        self._grace_period()
        self._free(slot)

    def _free(self, slot: Memslot) -> None:
        """kvm_arch_flush_shadow_memslot + kvm_free_memslot: zap what the slot mapped, unbind
        its guest_memfd, free it. No reader can reach it any more."""
        kvm = self.kvm
        kvm.mmu.flush_shadow_memslot(slot)
        gmem = slot.get_gmem()
        if gmem is not None:
            gmem.unbind(slot)
        if slot.dmabuf is not None:
            slot.dmabuf.detach()
            slot.dmabuf = None
        observe(slot, *F_FREED, write=True)
        slot.freed = True
        kvm.kernel.track("memslot", -1)
