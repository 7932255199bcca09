"""KVM's stage-2 MMU (EPT/NPT) and the guest-access path (arch/x86/kvm/mmu/mmu.c, tdp_mmu.c;
the mmu_invalidate protocol of virt/kvm/kvm_main.c).

``spte`` maps guest-physical ranges to host-physical (linear extents); ``writable`` marks the
ranges mapped writable. The fault path is the kernel's:

1. under ``kvm.srcu``, find the memslot (none: KVM_EXIT_MMIO);
2. private/shared decision from the memory attributes; a mismatch with what the access asks
   for, or a private access to a slot without guest_memfd: KVM_EXIT_MEMORY_FAULT;
3. snapshot ``mmu_invalidate_seq``, get the pfn (guest_memfd or the VMM's page tables) and hold
   a reference to the page while doing so;
4. take ``mmu_lock``; if an invalidation is in progress or completed since the snapshot, or the
   slot went invalid, retry; else install the SPTE.

Invalidations (punch hole, memslot delete, attribute change, the VMM's munmap through the
mmu_notifier) run invalidate_begin (in_progress++, zap) ... invalidate_end (seq++).
Leaves out: shadow paging, huge SPTEs, A/D bits, TLB flush latency (a zap is a flush).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...sim.locks import Mutex
from ...uapi import kvm as K
from ...uapi import linux as L

if TYPE_CHECKING:
    from .kvm_main import Kvm

PAGE = L.PAGE_SIZE


@dataclass
class KvmExit:
    """What KVM_RUN reports to the VMM for one guest access."""

    reason: int
    gpa: int = 0
    size: int = 0
    is_write: bool = False
    data: bytes = b""
    flags: int = 0

    @property
    def name(self) -> str:
        return {K.KVM_EXIT_MMIO: "MMIO", K.KVM_EXIT_MEMORY_FAULT: "MEMORY_FAULT",
                K.KVM_EXIT_HLT: "HLT", K.KVM_EXIT_IO: "IO"}.get(self.reason, str(self.reason))


class KvmMmu:
    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        # Two tables, as TDX's shared EPT and private S-EPT (SNP/SW_PROTECTED resolve the same
        # way): a private access never hits a shared mapping of the same GPA or vice versa.
        self.spte: RangeMap[int] = RangeMap(linear=True)
        self.spte_private: RangeMap[int] = RangeMap(linear=True)
        self.writable: RangeMap[bool] = RangeMap()
        self.writable_private: RangeMap[bool] = RangeMap()
        self.mmu_lock = Mutex(kvm.sched, f"vm{kvm.vm_id}.mmu_lock", "kvm->mmu_lock")
        self.invalidate_seq = 0
        self.invalidate_in_progress = 0

    # ----- invalidation ---------------------------------------------------------------
    def tables(self, private: bool) -> tuple[RangeMap[int], RangeMap[bool]]:
        if private:
            return self.spte_private, self.writable_private
        return self.spte, self.writable

    def zap_gfn_range(self, start: int, end: int) -> None:
        if self.spte.any_in(start, end) or self.spte_private.any_in(start, end):
            self.kvm.sched.emit("kvm", "zap", start=start, end=end)
        for m in (self.spte, self.spte_private, self.writable, self.writable_private):
            m.remove(start, end)

    def invalidate_begin(self, start: int, end: int) -> None:
        with self.mmu_lock:
            self.invalidate_in_progress += 1
            self.zap_gfn_range(start, end)

    def invalidate_end(self) -> None:
        with self.mmu_lock:
            self.invalidate_seq += 1
            self.invalidate_in_progress -= 1

    def hva_invalidate(self, start: int, end: int) -> None:
        """The mmu_notifier's invalidate_range_start/end for the VMM's hva range."""
        # gmem-only slots do not map through the hva: their invalidation comes from gmem.
        slots = [s for s in self.kvm.memslots.hva_slots(start, end)
                 if not (s.gmem is not None and self.kvm.gmem_only(s))]
        for slot in slots:
            s = max(start, slot.userspace_addr) - slot.userspace_addr + slot.base_gpa
            e = min(end, slot.userspace_addr + slot.npages * PAGE) - slot.userspace_addr
            self.invalidate_begin(s, e + slot.base_gpa)
        for _ in slots:
            self.invalidate_end()

    # ----- the guest access path -----------------------------------------------------------
    def access(self, gpa: int, n: int, write: bool, data: bytes | None,
               private: bool | None, who: str) -> tuple[bytes, KvmExit | None]:
        """A guest load/store of ``n`` bytes at ``gpa`` (within one page)."""
        kvm = self.kvm
        assert (gpa & (PAGE - 1)) + n <= PAGE, "guest accesses here stay within a page"
        for _ in range(64):
            kvm.sched.point(f"vm{kvm.vm_id}.gpa:{gpa >> 12:#x}", "w" if write else "r")
            want_private = kvm.mem_is_private(gpa) if private is None else private
            spte, writable = self.tables(want_private)
            phys = spte.lookup(gpa)
            if phys is not None and (not write or writable.lookup(gpa)):
                if write:
                    assert data is not None
                    kvm.kernel.phys.write(phys, data, who)
                    return b"", None
                return kvm.kernel.phys.read(phys, n, who), None
            out = self.page_fault(gpa, n, write, data, private)
            if out is not None:
                return b"", out
        raise kerr(errno.EAGAIN, f"guest access at {gpa:#x}: fault retried 64 times")

    def page_fault(self, gpa: int, n: int, write: bool, data: bytes | None,
                   private: bool | None) -> KvmExit | None:
        kvm = self.kvm
        bugs = kvm.kernel.profile.bugs
        idx = kvm.srcu.read_lock()
        try:
            slot = kvm.memslots.lookup(0, gpa)
            if slot is None:
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            kvm.sched.point(f"vm{kvm.vm_id}.memslot:{slot.id}", "r")
            slot.touch()
            if slot.invalid:
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            is_private = kvm.mem_is_private(gpa)
            if private is not None and private != is_private:
                return KvmExit(K.KVM_EXIT_MEMORY_FAULT, gpa & ~(PAGE - 1), PAGE, write,
                               flags=K.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0)
            if is_private and slot.gmem is None:
                return KvmExit(K.KVM_EXIT_MEMORY_FAULT, gpa & ~(PAGE - 1), PAGE, write,
                               flags=K.KVM_MEMORY_EXIT_FLAG_PRIVATE)
            if write and slot.flags & K.KVM_MEM_READONLY:
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            mmu_seq = self.invalidate_seq
            page = gpa & ~(PAGE - 1)
            pfn = self._faultin_pfn(slot, page, write, is_private)
            kvm.kernel.phys.pin(pfn, pfn + PAGE)  # the faultin page reference
            try:
                kvm.sched.point(f"vm{kvm.vm_id}.pfn", "r")
                with self.mmu_lock:
                    slot.touch()
                    stale = self.invalidate_in_progress or self.invalidate_seq != mmu_seq
                    if "kvm.no_mmu_invalidate_retry" in bugs:
                        stale = False
                    if stale or slot.invalid:
                        kvm.sched.emit("kvm", "fault-retry", gpa=page)
                    else:
                        spte, writable = self.tables(is_private)
                        spte.set(page, page + PAGE, pfn)
                        if write or not slot.flags & K.KVM_MEM_READONLY:
                            writable.set(page, page + PAGE, True)
                        kvm.sched.emit("kvm", "map", gpa=page, pfn=pfn >> 12)
                        return None
            finally:
                kvm.kernel.phys.unpin(pfn, pfn + PAGE)
        finally:
            kvm.srcu.read_unlock(idx)
        kvm.sched.yield_(f"vm{kvm.vm_id}.retry")
        return None

    def _faultin_pfn(self, slot: object, page: int, write: bool, is_private: bool) -> int:
        from .memslots import Memslot

        assert isinstance(slot, Memslot)
        kvm = self.kvm
        if slot.gmem is not None and (is_private or kvm.gmem_only(slot)):
            return slot.gmem.get_pfn(slot.gmem_offset + (page - slot.base_gpa))
        if slot.gmem is None and slot.flags & K.KVM_MEM_GUEST_MEMFD:
            raise kerr(errno.EFAULT, f"KVM_RUN: slot {slot.id} lost its guest_memfd")
        hva = slot.userspace_addr + (page - slot.base_gpa)
        try:
            pieces = kvm.mm.resolve(hva, PAGE, write)
        except Fault as f:
            raise kerr(errno.EFAULT, f"KVM_RUN: hva {hva:#x} of slot {slot.id}: {f}") from None
        if not pieces or pieces[0][2] < 0:
            pieces = kvm.mm.resolve(hva, PAGE, True)
        return pieces[0][2]
