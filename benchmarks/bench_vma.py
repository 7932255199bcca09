"""The address space at scale: mmap+munmap cost against the number of VMAs, merging of adjacent
anonymous mappings, and munmap with many VMs subscribed to the mm's mmu notifiers.

    python benchmarks/bench_vma.py [--sizes 1000,20000] [--vms 1020] [--repeat N]

Cases (SimHost only; the figures are medians of ``--repeat`` samples, time.perf_counter):

vmas     ``n`` VMAs that cannot merge (alternating PROT_READ and PROT_READ|PROT_WRITE), then
         one-page anonymous mmap+munmap pairs timed: the cost per pair.
merge    ``n`` one-page anonymous mmaps with the same protection, back to back: how many VMAs
         the address space holds afterwards (the kernel merges them into one).
vms      ``--vms`` VMs, each with a memslot over the same 1 MiB mapping (one mmu-notifier
         subscription per VM), then mmap+munmap of an unrelated page (no VM is affected), and
         the munmap of the shared mapping itself (every VM is), timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

from passthru import SimHost
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

PAGE = 4096
ANON = L.MAP_PRIVATE | L.MAP_ANONYMOUS
RW = L.PROT_READ | L.PROT_WRITE


def _pairs(h: SimHost, inner: int) -> float:
    t = time.perf_counter()
    for _ in range(inner):
        a = h.mmap(0, PAGE, RW, ANON, -1, 0)
        h.munmap(a, PAGE)
    return (time.perf_counter() - t) / inner


def bench_vmas(n: int, repeat: int) -> float:
    h = SimHost()
    for i in range(n):
        h.mmap(0, PAGE, L.PROT_READ if i % 2 else RW, ANON, -1, 0)
    assert len(h.proc.mm.vmas) == n
    inner = max(10, 20000 // n)
    return statistics.median(_pairs(h, inner) for _ in range(repeat))


def bench_merge(n: int) -> int:
    h = SimHost()
    for _ in range(n):
        h.mmap(0, PAGE, RW, ANON, -1, 0)
    return len(h.proc.mm.vmas)


def bench_vms(nvms: int, repeat: int) -> tuple[float, float]:
    h = SimHost()
    kfd = h.open("/dev/kvm", L.O_RDWR)
    mem = h.mmap(0, 1 << 20, RW, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    for _ in range(nvms):
        vm = h.ioctl(kfd, K.KVM_CREATE_VM, 0)
        h.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, K.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0, memory_size=1 << 20, userspace_addr=mem))
    other = statistics.median(_pairs(h, 10) for _ in range(repeat))
    t = time.perf_counter()
    h.munmap(mem, 1 << 20)
    shared = time.perf_counter() - t
    return other, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,20000", help="VMA counts, comma separated")
    ap.add_argument("--vms", type=int, default=1020, help="VMs sharing one mapping")
    ap.add_argument("--repeat", type=int, default=5, help="samples per figure (median)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'case':<34}{'figure':>16}")
    for n in sizes:
        print(f"{f'mmap+munmap, {n} VMAs':<34}{bench_vmas(n, args.repeat) * 1e6:>13.1f} us")
    for n in sizes:
        print(f"{f'VMAs after {n} adjacent anon mmaps':<34}{bench_merge(n):>16}")
    other, shared = bench_vms(args.vms, args.repeat)
    print(f"{f'mmap+munmap, {args.vms} VMs subscribed':<34}{other * 1e6:>13.1f} us")
    print(f"{f'munmap of the mapping {args.vms} VMs use':<34}{shared * 1e6:>13.1f} us")


if __name__ == "__main__":
    main()
