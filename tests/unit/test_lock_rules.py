"""Lock rules of the kvm, mm and gup models (issue 7, §2).

- every ``lockdep_assert_held`` fires, naming the lock and the function, when the function
  is called without its lock, and stays silent on the normal paths;
- the fixes: GUP faults pages in and takes its references with mmap_lock still held, the KVM
  fault path holds mmap_lock for the hva → pfn lookup and the gmem invalidate_lock for
  kvm_gmem_get_pfn;
- plain accesses to lock-protected tracked state from two tasks without the lock are data
  races (reported with the structure's label), while the accesses the kernel marks — a vCPU's
  own loads and stores, memory contents — never are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from passthru import SimHost
from passthru.check.discover import builtin
from passthru.check.runner import check
from passthru.check.scenario import Sandbox, scenario
from passthru.kernel.fs.uaccess import UserArg
from passthru.kernel.kvm.guest_memfd import GmemFile
from passthru.kernel.kvm.memslots import Memslot
from passthru.kernel.mm.gup import pin_user_pages
from passthru.sim.scheduler import Scheduler
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = L.PAGE_SIZE
SIZE = 16 * PAGE
HVA_GPA = 0x100000


def lockdep(host: SimHost) -> list[str]:
    return [v.message for v in host.sched.violations if v.kind == "lockdep"]


def races(sched: Scheduler) -> list[str]:
    return [v.message for v in sched.violations if v.kind == "data-race"]


class Vm:
    """A VM with a guest_memfd slot at gpa 0 and an anonymous-memory slot at HVA_GPA."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        kvm_fd = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
        self.fd = host.ioctl(kvm_fd, K.KVM_CREATE_VM, K.KVM_X86_DEFAULT_VM)
        host.close(kvm_fd)
        self.gmem_fd = host.ioctl(self.fd, K.KVM_CREATE_GUEST_MEMFD, K.kvm_create_guest_memfd(
            size=SIZE, flags=K.GUEST_MEMFD_FLAG_MMAP | K.GUEST_MEMFD_FLAG_INIT_SHARED))
        host.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
            slot=0, flags=K.KVM_MEM_GUEST_MEMFD, guest_phys_addr=0, memory_size=SIZE,
            guest_memfd=self.gmem_fd, guest_memfd_offset=0))
        self.anon = host.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE,
                              L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
        host.ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
            slot=1, flags=0, guest_phys_addr=HVA_GPA, memory_size=4 * PAGE,
            userspace_addr=self.anon))
        self.vcpu_fd = host.ioctl(self.fd, K.KVM_CREATE_VCPU, 0)
        self.vcpu = host.vcpu(self.vcpu_fd)
        self.kvm = host.proc.fds[self.fd].kvm  # type: ignore[attr-defined]
        gmem = host.proc.fds[self.gmem_fd]
        assert isinstance(gmem, GmemFile)
        self.gmem = gmem
        self.mm = host.proc.mm


def spy(monkeypatch: pytest.MonkeyPatch, obj: Any, name: str,
        probe: Callable[[], Any]) -> list[Any]:
    """Wrap ``obj.name`` so each call records ``probe()`` first."""
    seen: list[Any] = []
    orig = getattr(obj, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        seen.append(probe())
        return orig(*a, **kw)

    monkeypatch.setattr(obj, name, wrapper)
    return seen


# ----- the normal paths hold their locks ---------------------------------------------------


def test_the_normal_paths_assert_nothing() -> None:
    host = SimHost()
    vm = Vm(host)
    assert vm.vcpu.access(0x1000, data=b"\xaa" * 8) == (b"", None)
    assert vm.vcpu.access(0x1000, 8) == (b"\xaa" * 8, None)
    assert vm.vcpu.access(HVA_GPA + 8, data=b"hva!") == (b"", None)
    assert host.peek(vm.anon + 8, 4) == b"hva!"
    host.poke(vm.anon + PAGE, b"pinned")
    pin = pin_user_pages(vm.mm, vm.anon, 2 * PAGE, write=True)
    pin.unpin()
    host.fallocate(vm.gmem_fd, L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE, 0, 4 * PAGE)
    assert vm.kvm.mmu.spte.lookup(0x1000) is None
    host.munmap(vm.anon, PAGE)  # the mmu_notifier zaps the hva slot's first page
    assert vm.kvm.mmu.spte.lookup(HVA_GPA) is None
    host.ioctl(vm.fd, K.KVM_SET_USER_MEMORY_REGION2, K.kvm_userspace_memory_region2(
        slot=1, flags=0, guest_phys_addr=HVA_GPA, memory_size=0))
    host.close(vm.gmem_fd)  # kvm_gmem_release: slots_lock, invalidate_lock, mmu_lock
    host.exit()
    assert host.sched.violations == []
    assert host.leaks() == []


# ----- each assertion fires without its lock -----------------------------------------------


def test_fault_path_asserts_mmap_lock() -> None:
    host = SimHost()
    addr = host.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_PRIVATE | L.MAP_ANONYMOUS,
                     -1, 0)
    mm = host.proc.mm
    mm.resolve(addr, PAGE, True)
    (msg,) = lockdep(host)
    assert "handle_mm_fault" in msg and "vmm.mmap_lock" in msg
    host.sched.violations.clear()
    mm.mmap_lock.down_read()
    mm.resolve(addr, PAGE, True)
    mm.mmap_lock.up_read()
    assert lockdep(host) == []


def test_vma_tree_changes_assert_mmap_lock_for_write() -> None:
    host = SimHost()
    addr = host.mmap(0, PAGE, L.PROT_READ, L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    mm = host.proc.mm
    vma = mm.find_vma(addr)
    assert vma is not None
    mm.mmap_lock.down_read()  # read is not enough to unlink a VMA
    mm._remove_vma(vma)
    mm.mmap_lock.up_read()
    (msg,) = lockdep(host)
    assert "vma_unlink" in msg and "lockdep_assert_held_write" in msg


def test_zap_install_and_retry_assert_mmu_lock() -> None:
    host = SimHost()
    mmu = Vm(host).kvm.mmu
    mmu.install(0, 0x8000, False, True)
    mmu.retry(0)
    mmu.zap_gfn_range(0, PAGE)
    msgs = lockdep(host)
    assert len(msgs) == 3 and all("vm1.mmu_lock" in m for m in msgs)
    assert [m.split(":")[0] for m in msgs] == [
        "kvm_tdp_mmu_map", "mmu_invalidate_retry_gfn", "kvm_tdp_mmu_zap_leafs"]
    host.sched.violations.clear()
    with mmu.mmu_lock:
        mmu.install(0, 0x8000, False, True)
        assert not mmu.retry(mmu.invalidate_seq)
        mmu.zap_gfn_range(0, PAGE)
    assert lockdep(host) == []


def test_memslot_updates_assert_slots_lock() -> None:
    host = SimHost()
    vm = Vm(host)
    slots = vm.kvm.memslots
    mem = K.kvm_userspace_memory_region2(slot=2, flags=0, guest_phys_addr=0x200000,
                                         memory_size=PAGE, userspace_addr=vm.anon)
    slots.set_memory_region(mem, True)
    (msg,) = lockdep(host)
    assert msg.startswith("kvm_set_memory_region:") and "vm1.slots_lock" in msg
    host.sched.violations.clear()
    with vm.kvm.slots_lock:
        slots.set_memory_region(K.kvm_userspace_memory_region2(slot=2, memory_size=0), True)
    assert lockdep(host) == []
    slots.delete(slots.by_id[1])
    assert any(m.startswith("kvm_set_memslot:") for m in lockdep(host))


def test_gmem_invalidation_asserts_invalidate_lock_for_write() -> None:
    host = SimHost()
    gmem = Vm(host).gmem
    gmem.invalidate_begin(0, PAGE)
    gmem.invalidate_lock.down_read()
    gmem.invalidate_end(0, PAGE)
    gmem.invalidate_lock.up_read()
    msgs = lockdep(host)
    assert [m.split(":")[0] for m in msgs] == [
        "kvm_gmem_invalidate_begin", "kvm_gmem_invalidate_end"]
    assert all("gmem1.invalidate_lock" in m and "_write(" in m for m in msgs)
    host.sched.violations.clear()
    gmem.punch_hole(0, PAGE)  # takes it for write itself
    assert lockdep(host) == []


# ----- the fixed paths hold the kernel's locks ---------------------------------------------


def test_gup_faults_in_and_pins_under_mmap_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpopulated private memory is faulted in for write before pinning: that second
    resolve once ran after mmap_lock was dropped (the VMA could be gone by then)."""
    host = SimHost()
    addr = host.mmap(0, 2 * PAGE, L.PROT_READ | L.PROT_WRITE,
                     L.MAP_PRIVATE | L.MAP_ANONYMOUS, -1, 0)
    mm = host.proc.mm
    held = spy(monkeypatch, mm, "resolve", mm.mmap_lock.held)
    pins = spy(monkeypatch, host.kernel.phys, "pin", mm.mmap_lock.held)
    pin = pin_user_pages(mm, addr, 2 * PAGE, write=False)
    assert held == [True, True] and pins and all(pins)
    assert not mm.mmap_lock.held()
    pin.unpin()
    assert host.sched.violations == []


def test_kvm_fault_holds_mmap_lock_for_hva_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    host = SimHost()
    vm = Vm(host)
    held = spy(monkeypatch, vm.mm, "resolve", vm.mm.mmap_lock.held)
    assert vm.vcpu.access(HVA_GPA, data=b"x") == (b"", None)
    assert held and all(held)
    assert host.sched.violations == []


def test_kvm_gmem_get_pfn_holds_invalidate_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    host = SimHost()
    vm = Vm(host)
    held = spy(monkeypatch, vm.gmem.cache, "populate", vm.gmem.invalidate_lock.held)
    assert vm.vcpu.access(0x2000, data=b"x") == (b"", None)
    assert held == [True]


# ----- data races on lock-protected state ----------------------------------------------------


def two_tasks(a: Callable[[Vm], None], b: Callable[[Vm], None]) -> tuple[Scheduler, Vm]:
    """Set up a VM, then run ``a`` and ``b`` as two tasks under footprint tracking."""
    sched = Scheduler(track=True)
    assert sched.tracker is not None
    sched.tracker.activate()
    try:
        vm = Vm(SimHost(sched=sched))
        sched.spawn("t1", a, vm)
        sched.spawn("t2", b, vm)
        sched.run()
    finally:
        sched.tracker.deactivate()
    return sched, vm


def test_spte_writes_without_mmu_lock_are_a_data_race() -> None:
    sched, _ = two_tasks(lambda vm: vm.kvm.mmu.spte.set(0, PAGE, 0x8000),
                         lambda vm: vm.kvm.mmu.spte.remove(0, PAGE))
    (msg,) = races(sched)
    assert msg.startswith("vm1.spte (") and "write by t2" in msg and "write by t1" in msg

    def locked(f: Callable[[Vm], None]) -> Callable[[Vm], None]:
        def run(vm: Vm) -> None:
            with vm.kvm.mmu.mmu_lock:
                f(vm)
        return run

    sched, _ = two_tasks(locked(lambda vm: vm.kvm.mmu.install(0, 0x8000, False, True)),
                         locked(lambda vm: vm.kvm.mmu.zap_gfn_range(0, PAGE)))
    assert sched.violations == []


def test_memslot_set_changes_without_slots_lock_race() -> None:
    def add(vm: Vm) -> None:  # kvm_set_memory_region's insert, without slots_lock
        vm.kvm.memslots._insert(Memslot(vm.kvm, 3, 0, 0x300000, 1, vm.anon, 0))

    def lookup(vm: Vm) -> None:
        vm.kvm.memslots.by_id.get(3)

    sched, _ = two_tasks(add, lookup)
    (msg,) = races(sched)
    assert msg.startswith("vm1.memslots (")


def test_vcpu_ioctls_serialise_on_the_vcpu_mutex() -> None:
    def set_regs(vm: Vm) -> None:
        vm.host.ioctl(vm.vcpu_fd, K.KVM_SET_REGS, K.kvm_regs(rax=1))

    sched, _ = two_tasks(set_regs, set_regs)
    assert sched.violations == []

    def set_regs_unlocked(vm: Vm) -> None:  # kvm_vcpu_ioctl without vcpu->mutex
        f = vm.host.proc.fds[vm.vcpu_fd]
        f._ioctl(K.KVM_SET_REGS, UserArg(vm.host.proc, K.kvm_regs(rax=1)))  # type: ignore[attr-defined]

    sched, _ = two_tasks(set_regs_unlocked, set_regs_unlocked)
    (msg,) = races(sched)
    assert msg.startswith("vcpu:vm1.0.regs (")


def test_guest_accesses_and_memory_contents_never_race() -> None:
    """A vCPU writing a page while the VMM writes it through its own mapping and a second
    guest access stores to it: the SPTE installs are under mmu_lock, the loads and stores
    are hardware (marked) and memory contents are no kernel state."""
    def guest(vm: Vm) -> None:
        vm.vcpu.access(0x1000, data=b"\x01" * 8)
        vm.vcpu.access(0x1000, 8)

    def vmm(vm: Vm) -> None:
        addr = vm.host.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, vm.gmem_fd,
                            PAGE)
        vm.host.poke(addr, b"\x02" * 8)
        vm.kvm.mmu.access(0x1000, 8, True, b"\x03" * 8, None, "vcpu:other")

    sched, _ = two_tasks(guest, vmm)
    assert sched.violations == []


# ----- through the checker -------------------------------------------------------------------


def _bindings_scenario(locked: bool) -> Any:
    @scenario(expect="violation" if not locked else "safe", teardown=False,
              name=f"lock_rules_gmem_bindings_{'locked' if locked else 'unlocked'}")
    def sc(s: Sandbox) -> None:
        vm = Vm(s.host)
        gmem = vm.gmem
        lock = gmem.invalidate_lock

        def change(start: int) -> None:
            if locked:
                lock.down_write()
            s.point("bindings")
            gmem.bindings.remove(start, start + PAGE)
            if locked:
                lock.up_write()

        s.spawn("a", change, 0)
        s.spawn("b", change, 0)

    return sc.__passthru_scenario__  # type: ignore[attr-defined]


@pytest.mark.parametrize("strategy", ["dfs", "dpor"])
def test_checker_reports_an_unlocked_bindings_change(strategy: str) -> None:
    v = check(_bindings_scenario(False), "linux-7.1", strategy=strategy)
    assert v.found and v.violations[0].kind == "data-race"
    assert v.violations[0].message.startswith("gmem1.bindings (")
    v = check(_bindings_scenario(True), "linux-7.1", strategy=strategy)
    assert v.ok and not v.violations


KVM = {sc.name: sc for sc in builtin() if sc.module == "passthru.scenarios.kvm"}


# DPOR over gmem_punch_hole_vs_two_vcpus takes ~25,000 schedules (that many Mazurkiewicz
# traces): benchmarks/bench_checker.py (tables 5 and 6) runs it; the tests run it with DFS.
KVM_CASES = [(n, s) for n in sorted(KVM) for s in ("dfs", "dpor")
             if (n, s) != ("gmem_punch_hole_vs_two_vcpus", "dpor")]


@pytest.mark.parametrize("name,strategy", KVM_CASES)
def test_kvm_scenarios_keep_their_verdicts(name: str, strategy: str) -> None:
    """Safe ones have no data race in any schedule; buggy ones are found as what they are."""
    sc = KVM[name]
    v = check(sc, sc.profiles[-1], strategy=strategy)
    assert v.ok, [x.text() for x in v.violations]
    if sc.expect == "violation":
        want = "stale-spte" if "punch" in name else "use-after-free"
        assert v.violations[0].kind == want
    else:
        assert v.complete and not v.violations
