"""Invariants over KVM's state, for scenarios and the checker (what KASAN/KVM_BUG_ON would
catch in arch/x86/kvm/mmu/: an SPTE that outlives the page it maps).

:func:`sptes_backed` — every SPTE (shared and private) points at memory that is still
allocated, and not an orphan a file dropped; reported as :data:`STALE_SPTE`.
Units: GPAs and physical addresses in bytes.
Locking: none taken — read from outside (an invariant is not an access: the checker runs it
with tracking off, between steps, when no task is inside a critical section).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...sim import kinds

if TYPE_CHECKING:
    from ...hw.physmem import PhysMem
    from .kvm_main import Kvm

# The kind scenarios name this invariant with: ``s.invariant(STALE_SPTE, sptes_backed(...))``.
STALE_SPTE = kinds.register("stale-spte", "kvm")


def sptes_backed(phys: PhysMem, vms: list[Kvm]) -> Callable[[], str | None]:
    """A check over ``vms``' stage-2 tables: None when every mapping is backed."""
    mmus = [vm.mmu for vm in vms]

    def check() -> str | None:
        for mmu in mmus:
            for gs, ge, p in [*mmu.spte, *mmu.spte_private]:
                for os_, _, o in phys.owners.overlapping(p, p + (ge - gs)):
                    if o.state == "orphan":
                        return (f"SPTE gpa [{gs:#x}, {ge:#x}) maps a page its file dropped "
                                f"(phys {os_:#x}, orphan of {o.owner})")
                if phys.owners.gaps(p, p + (ge - gs)):
                    return f"SPTE gpa [{gs:#x}, {ge:#x}) maps freed memory at {p:#x}"
        return None

    return check
