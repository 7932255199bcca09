"""mmu_notifier subscriptions (kernel/mm/mmu_notifier.py): an invalidation calls the plain
subscribers and only the ranged ones (KVM, through its memslots' hva ranges) it overlaps, so
a munmap with many VMs on the mm costs what it affects (issue 9 §1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from passthru import SimHost
from passthru.kernel.mm.mmu_notifier import MmuNotifierSubscriptions
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = 4096
RW = L.PROT_READ | L.PROT_WRITE
SHARED = L.MAP_SHARED | L.MAP_ANONYMOUS


def _vm_with_slot(h: SimHost, kfd: int, uaddr: int, size: int, slot: int = 0) -> int:
    vm = h.ioctl(kfd, K.KVM_CREATE_VM, 0)
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
        slot=slot, guest_phys_addr=0, memory_size=size, userspace_addr=uaddr))
    return vm


def _called(h: SimHost, start: int, end: int) -> list[int]:
    """Which VMs an invalidation of [start, end) would call, by vm id."""
    sids = set(h.proc.mm.notifiers.ids_of(start, end))
    vms = {f.kvm for f in h.proc.fds.values() if f.kind == "kvm-vm"}  # type: ignore[attr-defined]
    return sorted(vm.vm_id for vm in vms if vm.mn_id in sids)


def test_unrelated_munmap_calls_no_vm_and_overlapping_munmap_calls_each() -> None:
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    a = h.mmap(0, 16 * PAGE, RW, SHARED, -1, 0)
    b = h.mmap(0, 16 * PAGE, RW, SHARED, -1, 0)
    for _ in range(3):
        _vm_with_slot(h, kfd, a, 16 * PAGE)
    _vm_with_slot(h, kfd, b, 4 * PAGE)
    other = h.mmap(0, PAGE, RW, SHARED, -1, 0)
    assert _called(h, other, other + PAGE) == []
    assert _called(h, a, a + PAGE) == [1, 2, 3]
    assert _called(h, b + 4 * PAGE, b + 16 * PAGE) == []  # past the 4-page slot
    assert _called(h, b, b + PAGE) == [4]
    lo, hi = min(a, b), max(a, b) + 16 * PAGE
    assert _called(h, lo, hi) == [1, 2, 3, 4]


def test_deleted_slot_withdraws_its_range_and_the_sptes_still_go() -> None:
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    a = h.mmap(0, 4 * PAGE, RW, SHARED, -1, 0)
    vm = _vm_with_slot(h, kfd, a, 4 * PAGE)
    assert _called(h, a, a + PAGE) == [1]
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
        slot=0, guest_phys_addr=0, memory_size=0, userspace_addr=a))
    assert _called(h, a, a + PAGE) == []
    h.close(vm)
    assert len(h.proc.mm.notifiers) == 0  # the VM's destruction unregistered it


def test_two_slots_aliasing_one_mapping_keep_the_range_until_both_go() -> None:
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    a = h.mmap(0, 4 * PAGE, RW, SHARED, -1, 0)
    vm = _vm_with_slot(h, kfd, a, 4 * PAGE, slot=0)
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
        slot=1, guest_phys_addr=1 << 20, memory_size=2 * PAGE, userspace_addr=a))
    h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
        slot=0, guest_phys_addr=0, memory_size=0, userspace_addr=a))
    assert _called(h, a, a + PAGE) == [1]  # slot 1 still maps the first two pages
    assert _called(h, a + 2 * PAGE, a + 4 * PAGE) == []


_ranges = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 40),
                             st.integers(1, 12), st.booleans()), max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops=_ranges, q=st.tuples(st.integers(0, 50), st.integers(1, 20)))
def test_index_agrees_with_a_brute_force_walk(ops: list[tuple[int, int, int, int, bool]],
                                             q: tuple[int, int]) -> None:
    subs = MmuNotifierSubscriptions("t")
    fns = {}
    sids = []
    for i in range(4):
        def fn(s: int, e: int, i: int = i) -> None:
            pass
        fns[i] = fn
        sids.append(subs.register(fn, ranged=i != 3))  # subscriber 3 is plain
    live: set[tuple[int, int, int, int]] = set()
    for who, key, s, n, add in ops:
        if who == 3:
            continue
        if add and (who, key) not in {(w, k) for w, k, _, _ in live}:
            subs.add_range(sids[who], key, s, s + n)
            live.add((who, key, s, s + n))
        elif not add:
            for w, k, rs, re_ in list(live):
                if (w, k) == (who, key):
                    subs.remove_range(sids[w], k, rs, re_)
                    live.discard((w, k, rs, re_))
    qs, qe = q[0], q[0] + q[1]
    want = sorted({w for w, _, rs, re_ in live if rs < qe and qs < re_} | {3})
    got = subs.subscribers_of(qs, qe)
    assert got == [fns[w] for w in want]
