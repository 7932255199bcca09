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

Locking (which lock protects which field; asserted where the kernel asserts it):
- ``spte``/``spte_private``/``writable``/``writable_private`` (the stage-2 tables): installed
  and zapped only under ``mmu_lock`` (kvm_tdp_mmu_map, kvm_tdp_mmu_zap_leafs:
  lockdep_assert_held). The vCPU's own loads and stores walk them in hardware: marked reads,
  judged by physical truth (hw/physmem.py), never by the race detector.
- ``mmu_invalidate_seq``/``mmu_invalidate_in_progress``: written under ``mmu_lock``
  (kvm_mmu_invalidate_begin/end); read under it by mmu_invalidate_retry_gfn
  (lockdep_assert_held). The fault's snapshot of the sequence before resolving the pfn is
  the kernel's lockless READ_ONCE + smp_rmb, rechecked under mmu_lock: a marked read.
- The memslot set is read inside ``kvm.srcu`` (marked, memslots.py); the hva → pfn lookup of a
  normal slot holds the VMM's ``mmap_lock`` for read (hva_to_pfn → get_user_pages_unlocked);
  a guest_memfd slot's pfn comes from kvm_gmem_get_pfn (guest_memfd.py).
- Memory attributes are read with xa_load under RCU (marked, kvm_main.py); a change is an
  invalidation, so the retry check covers it.
Invariants: an SPTE is installed only if no invalidation began or ended since the fault
snapshotted ``mmu_invalidate_seq`` and its slot is still valid (checked under mmu_lock); a
private access is served only by ``spte_private`` and a shared one only by ``spte``; every
SPTE maps allocated memory (invariants.py checks it after each step).
Units: GPAs, host-physical addresses and ranges in bytes (SPTEs are extents, not pages).
Leaves out: shadow paging, huge SPTEs, A/D bits, TLB flush latency (a zap is a flush),
the lockless mmu_invalidate_retry_gfn_unsafe pre-check, mmu_lock as an rwlock (a mutex here).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...extents import RangeMap
from ...sim.locks import Mutex
from ...sim.track import Cell
from ...uapi import kvm as K
from ...uapi import linux as L
from ..lockdep_assert import lockdep_assert_held, marked
from ..mm.mm import VM_WRITE
from ..mm.page_alloc import zero_page
from ..profile import KVM_NO_MMU_INVALIDATE_RETRY

if TYPE_CHECKING:
    from .guest_memfd import GmemFile
    from .kvm_main import Kvm
    from .memslots import Memslot

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
        n = kvm.name
        # Two tables, as TDX's shared EPT and private S-EPT (SNP/SW_PROTECTED resolve the same
        # way): a private access never hits a shared mapping of the same GPA or vice versa.
        self.spte: RangeMap[int] = RangeMap(linear=True, label=f"{n}.spte")
        self.spte_private: RangeMap[int] = RangeMap(linear=True, label=f"{n}.spte_private")
        self.writable: RangeMap[bool] = RangeMap(label=f"{n}.spte_writable")
        self.writable_private: RangeMap[bool] = RangeMap(label=f"{n}.spte_writable_private")
        self.mmu_lock = Mutex(kvm.sched, f"{n}.mmu_lock", "kvm->mmu_lock")
        self._seq: Cell[int] = Cell(0, label=f"{n}.mmu_invalidate_seq")
        self._in_progress: Cell[int] = Cell(0, label=f"{n}.mmu_invalidate_in_progress")

    @property
    def invalidate_seq(self) -> int:
        """kvm->mmu_invalidate_seq, for observers outside the model (no access recorded)."""
        return self._seq.peek()

    @property
    def invalidate_in_progress(self) -> int:
        return self._in_progress.peek()

    # ----- invalidation ---------------------------------------------------------------
    def tables(self, private: bool) -> tuple[RangeMap[int], RangeMap[bool]]:
        if private:
            return self.spte_private, self.writable_private
        return self.spte, self.writable

    def zap_gfn_range(self, start: int, end: int) -> None:
        """kvm_tdp_mmu_zap_leafs: drop the SPTEs of ``[start, end)``; mmu_lock held."""
        lockdep_assert_held(self.mmu_lock, "kvm_tdp_mmu_zap_leafs")
        if self.spte.any_in(start, end) or self.spte_private.any_in(start, end):
            self.kvm.sched.emit("kvm", "zap", start=start, end=end)
        for m in (self.spte, self.spte_private, self.writable, self.writable_private):
            m.remove(start, end)

    def flush_shadow_memslot(self, slot: Memslot) -> None:
        """kvm_arch_flush_shadow_memslot: zap a slot's range under mmu_lock."""
        with self.mmu_lock:
            self.zap_gfn_range(slot.base_gpa, slot.end_gpa)

    def zap_all(self) -> None:
        """kvm_mmu_zap_all (VM teardown), under mmu_lock."""
        with self.mmu_lock:
            self.zap_gfn_range(0, 1 << 64)

    def invalidate_begin(self, start: int, end: int) -> None:
        """KVM_MMU_LOCK + kvm_mmu_invalidate_begin + kvm_unmap_gfn_range."""
        with self.mmu_lock:
            self._in_progress.set(self._in_progress.get() + 1)
            self.kvm.sched.emit("kvm", "invalidate-begin", start=start, end=end,
                                in_progress=self._in_progress.peek(), seq=self._seq.peek())
            self.zap_gfn_range(start, end)

    def invalidate_end(self) -> None:
        """KVM_MMU_LOCK + kvm_mmu_invalidate_end."""
        with self.mmu_lock:
            self._seq.set(self._seq.get() + 1)
            self._in_progress.set(self._in_progress.get() - 1)
            self.kvm.sched.emit("kvm", "invalidate-end", in_progress=self._in_progress.peek(),
                                seq=self._seq.peek())

    def hva_invalidate(self, start: int, end: int) -> None:
        """The mmu_notifier's invalidate_range_start/end for the VMM's hva range: the slot walk
        of kvm_handle_hva_range, inside a ``kvm.srcu`` read section."""
        kvm = self.kvm
        idx = kvm.srcu.read_lock()
        try:
            # gmem-only slots do not map through the hva: their invalidation comes from gmem.
            slots = [s for s in kvm.memslots.hva_slots(start, end)
                     if not kvm.gmem_only(s) and s.dmabuf is None]
            for slot in slots:
                s = max(start, slot.userspace_addr) - slot.userspace_addr + slot.base_gpa
                e = min(end, slot.userspace_addr + slot.npages * PAGE) - slot.userspace_addr
                self.invalidate_begin(s, e + slot.base_gpa)
            for _ in slots:
                self.invalidate_end()
        finally:
            kvm.srcu.read_unlock(idx)

    def retry(self, mmu_seq: int) -> bool:
        """mmu_invalidate_retry_gfn: has an invalidation begun or ended since ``mmu_seq``?"""
        lockdep_assert_held(self.mmu_lock, "mmu_invalidate_retry_gfn")
        seq, busy = self._seq.peek(), self._in_progress.peek()
        self.kvm.sched.emit("kvm", "retry-check", mmu_seq=mmu_seq, seq=seq, in_progress=busy,
                            retry=bool(busy) or seq != mmu_seq)
        return bool(self._in_progress.get()) or self._seq.get() != mmu_seq

    def install(self, page: int, pfn: int, private: bool, writable: bool) -> None:
        """kvm_tdp_mmu_map: install the SPTE of one page; mmu_lock held."""
        lockdep_assert_held(self.mmu_lock, "kvm_tdp_mmu_map")
        spte, wr = self.tables(private)
        spte.set(page, page + PAGE, pfn)
        if writable:
            wr.set(page, page + PAGE, True)

    # ----- the guest access path -----------------------------------------------------------
    def access(self, gpa: int, n: int, write: bool, data: bytes | None,
               private: bool | None, who: str) -> tuple[bytes, KvmExit | None]:
        """A guest load/store of ``n`` bytes at ``gpa`` (within one page)."""
        kvm = self.kvm
        assert (gpa & (PAGE - 1)) + n <= PAGE, "guest accesses here stay within a page"
        for _ in range(64):
            kvm.sched.point(f"vm{kvm.vm_id}.gpa:{gpa >> 12:#x}", "w" if write else "r")
            # The guest's own load/store: the CPU walks the stage-2 tables (hardware, marked).
            with marked():
                want_private = kvm.mem_is_private(gpa) if private is None else private
                spte, writable = self.tables(want_private)
                phys = spte.lookup(gpa)
                hit = phys is not None and (not write or bool(writable.lookup(gpa)))
            if hit:
                assert phys is not None
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
        """kvm_mmu_page_fault: find the slot (SRCU), snapshot mmu_invalidate_seq, fault the
        pfn in, then install the SPTE under mmu_lock unless an invalidation intervened."""
        kvm = self.kvm
        idx = kvm.srcu.read_lock()
        try:
            slot = kvm.memslots.lookup(0, gpa)
            if slot is None:
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            kvm.sched.point(f"vm{kvm.vm_id}.memslot:{slot.id}", "r")
            slot.touch()
            if slot.is_invalid():
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            is_private = kvm.mem_is_private(gpa)
            if private is not None and private != is_private:
                return KvmExit(K.KVM_EXIT_MEMORY_FAULT, gpa & ~(PAGE - 1), PAGE, write,
                               flags=K.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0)
            gmem = slot.get_gmem()
            if is_private and gmem is None:
                return KvmExit(K.KVM_EXIT_MEMORY_FAULT, gpa & ~(PAGE - 1), PAGE, write,
                               flags=K.KVM_MEMORY_EXIT_FLAG_PRIVATE)
            if write and slot.flags & K.KVM_MEM_READONLY:
                return KvmExit(K.KVM_EXIT_MMIO, gpa, n, write, data or b"")
            # READ_ONCE + smp_rmb: validated by mmu_invalidate_retry_gfn under mmu_lock.
            mmu_seq = self._seq.get_once()
            page = gpa & ~(PAGE - 1)
            pfn, map_writable = self._faultin_pfn(slot, gmem, page, write, is_private)
            kvm.sched.emit("kvm", "faultin-pfn", gpa=page, pfn=pfn >> 12, mmu_seq=mmu_seq,
                           private=is_private, writable=map_writable)
            kvm.kernel.phys.pin(pfn, pfn + PAGE)  # the faultin page reference
            try:
                kvm.sched.point(f"vm{kvm.vm_id}.pfn", "r")
                with self.mmu_lock:
                    slot.touch()
                    stale = self.retry(mmu_seq)
                    if kvm.kernel.profile.has_bug(KVM_NO_MMU_INVALIDATE_RETRY):
                        stale = False
                    if stale or slot.is_invalid():
                        kvm.sched.emit("kvm", "fault-retry", gpa=page)
                    else:
                        self.install(page, pfn, is_private, map_writable and (
                                     write or not slot.flags & K.KVM_MEM_READONLY))
                        kvm.sched.emit("kvm", "map", gpa=page, pfn=pfn >> 12)
                        return None
            finally:
                kvm.kernel.phys.unpin(pfn, pfn + PAGE)
        finally:
            kvm.srcu.read_unlock(idx)
        kvm.sched.yield_(f"vm{kvm.vm_id}.retry")
        return None

    def _faultin_pfn(self, slot: Memslot, gmem: GmemFile | None, page: int, write: bool,
                     is_private: bool) -> tuple[int, bool]:
        """kvm_mmu_faultin_pfn: guest_memfd (kvm_gmem_get_pfn) or the VMM's page tables
        (hva_to_pfn, which holds mmap_lock for read around GUP); the pfn and whether it may
        be mapped writable. A read fault of unpopulated private memory the VMM may not write
        gets the zero page, mapped read-only (GUP without FOLL_WRITE)."""
        kvm = self.kvm
        if slot.dmabuf is not None:  # a KVM_MEM_VFIO_DMABUF slot: the exporter's pfn
            return slot.dmabuf.pfn(page - slot.base_gpa), True
        if gmem is not None and (is_private or kvm.gmem_only(slot)):
            return gmem.get_pfn(slot.gmem_offset + (page - slot.base_gpa)), True
        if gmem is None and slot.flags & K.KVM_MEM_GUEST_MEMFD:
            raise kerr(errno.EFAULT, f"KVM_RUN: slot {slot.id} lost its guest_memfd")
        hva = slot.userspace_addr + (page - slot.base_gpa)
        mm = kvm.mm
        mm.mmap_lock.down_read()
        try:
            pieces = mm.resolve(hva, PAGE, write)
            if not pieces or pieces[0][2] < 0:
                vma = mm.find_vma(hva)
                if not write and vma is not None and not vma.vm_flags & VM_WRITE:
                    return zero_page(kvm.kernel).get(), False
                pieces = mm.resolve(hva, PAGE, True)
        except Fault as f:
            raise kerr(errno.EFAULT, f"KVM_RUN: hva {hva:#x} of slot {slot.id}: {f}") from None
        finally:
            mm.mmap_lock.up_read()
        return pieces[0][2], True
