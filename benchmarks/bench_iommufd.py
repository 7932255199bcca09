"""iommufd at scale: map a guest's RAM (a memfd of 2 MiB folios) into an IOAS attached to two
mock domains, then unmap half; and the per-call cost of map/unmap.

    python benchmarks/bench_iommufd.py [--sizes 1G,64G,1T] [--regions 8] [--calls 2000]

Cases (SimHost only; wall time by time.perf_counter, peak Python memory by tracemalloc, both
over the timed part only):

map      ``size`` bytes of a MFD_HUGETLB|MFD_HUGE_2MB memfd (the model backs it like shmem, in
         extents) mapped with IOAS_MAP_FILE as ``--regions`` areas of equal size into an IOAS
         with two domains attached (so every area is pinned once and mapped into both), then
         half of the areas unmapped with IOAS_UNMAP. The domains are two devices behind two
         units of a generic 48-bit IOMMU (4 KiB pages) bound through the kernel's device API:
         the test mock's aperture ends at 2 GiB (MOCK_APERTURE_LAST), too small for 64 GiB or
         1 TiB. The goal (issue 10 §7): under 1 s and 200 MB at 1 TiB — cost follows extents,
         not pages.
calls    IOAS_MAP + IOAS_UNMAP of one 4 KiB page of user memory, ``--calls`` times, with one
         mock domain attached: calls per second.
"""

from __future__ import annotations

import argparse
import ctypes
import time
import tracemalloc

from passthru import SimHost
from passthru.hw.iommu import Iommu
from passthru.hw.machine import Machine
from passthru.kernel.iommu.iommufd.device import iommufd_device_attach, iommufd_device_bind
from passthru.kernel.iommu.iommufd.driver import Device, IommuDriver
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L

GiB = 1 << 30
TiB = 1 << 40
PAGE = 4096
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
MFD_HUGE_2MB = 21 << 26  # MFD_HUGE_SHIFT 26, log2(2 MiB)


def _sz(cls: type[ctypes.Structure]) -> int:
    return ctypes.sizeof(cls)


def _ioas(h: SimHost, fd: int) -> int:
    a = I.iommu_ioas_alloc(size=_sz(I.iommu_ioas_alloc))
    h.ioctl(fd, I.IOMMU_IOAS_ALLOC, a)
    return int(a.out_ioas_id)


def _mock_domain(h: SimHost, fd: int, ioas: int) -> None:
    cmd = I.iommu_test_cmd(size=_sz(I.iommu_test_cmd), op=I.IOMMU_TEST_OP_MOCK_DOMAIN, id=ioas)
    h.ioctl(fd, I.IOMMU_TEST_CMD, cmd)


def _two_domains(h: SimHost, fd: int, ioas: int) -> None:
    """Two devices behind two IOMMU units (so two domains), attached to ``ioas``."""
    k = h.kernel
    ictx = h.proc.fds[fd]
    for i in range(2):
        dev = Device(f"bench{i}", Iommu(k.sched, k.phys, f"dmar{i}"), IommuDriver())
        idev = iommufd_device_bind(ictx, dev)  # type: ignore[arg-type]
        iommufd_device_attach(idev, None, ioas)


def _host(size: int) -> SimHost:
    # RAM for the guest plus the model's own: one range from 4 GiB.
    return SimHost(machine=Machine(ram=((0, 3 * GiB), (4 * GiB, 4 * GiB + size + 4 * GiB))))


def bench_map(size: int, regions: int) -> tuple[float, float, float, int]:
    """(seconds to map, seconds to unmap half, peak MB, IO page-table extents per domain)."""
    h = _host(size)
    fd = h.open("/dev/iommu", L.O_RDWR)
    ioas = _ioas(h, fd)
    _two_domains(h, fd, ioas)
    mfd = h.memfd_create("guest-ram", L.MFD_HUGETLB | MFD_HUGE_2MB)
    h.ftruncate(mfd, size)
    part = size // regions
    tracemalloc.start()
    t0 = time.perf_counter()
    iovas = []
    for i in range(regions):
        m = I.iommu_ioas_map_file(size=_sz(I.iommu_ioas_map_file), flags=RW, ioas_id=ioas,
                                  fd=mfd, start=i * part, length=part)
        h.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, m)
        iovas.append(int(m.iova))
    t1 = time.perf_counter()
    pinned = sum(e - s for s, e, _ in h.kernel.phys.pins)
    assert pinned == size, f"{pinned:#x} bytes pinned after mapping {size:#x}"
    for iova in iovas[regions // 2:]:
        h.ioctl(fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
            size=_sz(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=part))
    t2 = time.perf_counter()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    pinned = sum(e - s for s, e, _ in h.kernel.phys.pins)
    assert pinned == size - (regions - regions // 2) * part, "unmap did not unpin its half"
    iopt = h.proc.fds[fd].objects[ioas].iopt  # type: ignore[attr-defined]
    extents = len(iopt.domains[0].table) if iopt.domains else 0
    return t1 - t0, t2 - t1, peak / 1e6, extents


def bench_calls(calls: int) -> float:
    """IOAS_MAP + IOAS_UNMAP pairs per second with one mock domain attached."""
    h = SimHost()
    fd = h.open("/dev/iommu", L.O_RDWR)
    ioas = _ioas(h, fd)
    _mock_domain(h, fd, ioas)
    buf = h.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS, -1, 0)
    m = I.iommu_ioas_map(size=_sz(I.iommu_ioas_map), flags=RW | I.IOMMU_IOAS_MAP_FIXED_IOVA,
                         ioas_id=ioas, user_va=buf, length=PAGE, iova=1 << 26)
    u = I.iommu_ioas_unmap(size=_sz(I.iommu_ioas_unmap), ioas_id=ioas, iova=1 << 26,
                           length=PAGE)
    t = time.perf_counter()
    for _ in range(calls):
        h.ioctl(fd, I.IOMMU_IOAS_MAP, m)
        u.length = PAGE
        h.ioctl(fd, I.IOMMU_IOAS_UNMAP, u)
    return 2 * calls / (time.perf_counter() - t)


def _size(text: str) -> int:
    unit = {"G": GiB, "T": TiB, "M": 1 << 20}[text[-1].upper()]
    return int(text[:-1]) * unit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1G,64G,1T", help="guest RAM sizes, comma separated")
    ap.add_argument("--regions", type=int, default=8, help="areas the RAM is mapped as")
    ap.add_argument("--calls", type=int, default=2000, help="map+unmap pairs timed")
    args = ap.parse_args()
    print(f"{'guest RAM':>10} {'map (s)':>9} {'unmap half (s)':>15} {'peak MB':>8} "
          f"{'PTE extents':>12}")
    for text in args.sizes.split(","):
        tmap, tunmap, peak, extents = bench_map(_size(text), args.regions)
        print(f"{text:>10} {tmap:>9.3f} {tunmap:>15.3f} {peak:>8.2f} {extents:>12}")
    print(f"map/unmap calls per second: {bench_calls(args.calls):,.0f}")


if __name__ == "__main__":
    main()
