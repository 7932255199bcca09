"""mmu_notifier subscriptions of one mm (mm/mmu_notifier.c, include/linux/mmu_notifier.h).

The kernel keeps two kinds of subscriber on ``mm->notifier_subscriptions``: the plain
``mmu_notifier`` hlist, every member of which is called for every invalidation, and the
``mmu_interval_notifier`` interval tree, whose members are called only for invalidations that
overlap their range. KVM is a plain subscriber: its ``invalidate_range_start`` runs for every
invalidation of the VMM's mm and then walks its own memslots by hva (kvm_handle_hva_range).

The model files each subscriber that can say which hva ranges it cares about (KVM: the hva
ranges of its published memslots) in an interval index, so an invalidation calls only the
subscribers whose ranges overlap it: a munmap costs O(log n + k) for n subscribers of which
k are affected, as an interval tree gives, instead of a call per subscriber. Subscribers with
no ranges (``ranges=False``) are called for every invalidation, like the hlist.

What this changes against the kernel (docs/fidelity.md, "mmu_notifier subscriptions"): a VM
none of whose memslots overlaps the invalidated range is not called at all, where the kernel
calls it and it finds no slot. That call only takes and drops the VM's SRCU read lock and
bumps ``mn_active_invalidate_count`` for its duration; the model has neither effect on a VM
without an overlapping slot, so no verdict changes. The index is updated where a memslot is
published or unpublished (kvm_replace_memslot), so a walk and a memslot change conflict in the
checker's footprints exactly when their hva ranges overlap.

Locking: the subscriber list and the index change under the subscriptions' spinlock (the
model's ``atomic=True``; registration also holds mmap_lock for write, asserted by the caller,
Mm.mmu_notifier_register) and are read by the invalidation walk under the notifier SRCU.
Leaves out: the notifier SRCU's grace period on unregister, ``invalidate_seq`` of interval
notifiers, release/clear_young/test_young callbacks.
"""

from __future__ import annotations

from collections.abc import Callable

from ...extents import RangeMap
from ...sim.track import TrackedDict

#: An invalidation callback: called with the user range ``[start, end)`` whose PTEs go away.
Invalidate = Callable[[int, int], None]


class MmuNotifierSubscriptions:
    """``mm->notifier_subscriptions``: plain subscribers, and an interval index of hva ranges
    to the subscribers that registered them (a key per range, so one subscriber may file the
    same hva range twice — two memslots aliasing one mapping — and remove one of them)."""

    def __init__(self, label: str) -> None:
        # Plain and ranged subscribers by id; ids grow, so sorting gives registration order.
        self._plain: dict[int, Invalidate] = TrackedDict(label=f"{label}.list", atomic=True)
        self._ranged: dict[int, Invalidate] = TrackedDict(label=f"{label}.ranged", atomic=True)
        # hva range -> frozenset of (subscriber id, key): extents of equal subscriber sets.
        self._index: RangeMap[frozenset[tuple[int, object]]] = RangeMap(
            label=f"{label}.itree", atomic=True)
        self._next = 1

    def register(self, fn: Invalidate, ranged: bool) -> int:
        """Subscribe ``fn``; a ``ranged`` subscriber is called only over the ranges it files
        with :meth:`add_range`. Returns the subscription's id."""
        sid = self._next
        self._next += 1
        (self._ranged if ranged else self._plain)[sid] = fn
        return sid

    def unregister(self, sid: int) -> None:
        """Drop subscription ``sid`` and every range it filed (O(extents of the index))."""
        if self._plain.pop(sid, None) is not None:
            return
        del self._ranged[sid]
        for s, e, members in list(self._index.overlapping(0, 1 << 64)):
            keep = frozenset(m for m in members if m[0] != sid)
            if keep != members:
                self._replace(s, e, keep)

    def __len__(self) -> int:
        return len(self._plain) + len(self._ranged)

    def _replace(self, start: int, end: int, members: frozenset[tuple[int, object]]) -> None:
        if members:
            self._index.set(start, end, members)
        else:
            self._index.remove(start, end)

    def add_range(self, sid: int, key: object, start: int, end: int) -> None:
        """File hva ``[start, end)`` under subscription ``sid`` and ``key``: O(log n) plus the
        extents it overlaps."""
        if start >= end:
            return
        entry = (sid, key)
        pos = start
        for s, e, members in self._index.overlapping(start, end):
            if s > pos:
                self._index.set(pos, s, frozenset((entry,)))
            self._index.set(s, e, members | {entry})
            pos = e
        if pos < end:
            self._index.set(pos, end, frozenset((entry,)))

    def remove_range(self, sid: int, key: object, start: int, end: int) -> None:
        """Withdraw what :meth:`add_range` filed for ``(sid, key)`` over ``[start, end)``."""
        entry = (sid, key)
        for s, e, members in self._index.overlapping(start, end):
            if entry in members:
                self._replace(s, e, members - {entry})

    def ids_of(self, start: int, end: int) -> list[int]:
        """The subscription ids an invalidation of ``[start, end)`` calls, in registration
        order: every plain one, and each ranged one with a range overlapping it."""
        hit = {sid for _, _, members in self._index.overlapping(start, end)
               for sid, _ in members}
        hit.update(self._plain)
        return sorted(sid for sid in hit if sid in self._plain or sid in self._ranged)

    def subscribers_of(self, start: int, end: int) -> list[Invalidate]:
        """The callbacks of :meth:`ids_of`, in the same order."""
        return [self._plain.get(sid) or self._ranged[sid] for sid in self.ids_of(start, end)]

    def invalidate(self, start: int, end: int) -> None:
        """__mmu_notifier_invalidate_range_start/end for ``[start, end)``: call each
        subscriber it concerns (the model's callback does start and end together)."""
        for fn in self.subscribers_of(start, end):
            fn(start, end)
