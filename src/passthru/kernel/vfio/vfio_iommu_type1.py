"""The type1 IOMMU backend of the legacy VFIO container (drivers/vfio/vfio_iommu_type1.c,
as of 7.3 with the 6.19 overflow fixes, "vfio/type1: sanitize for overflow using
check_*_overflow()").

What it models: ``struct vfio_iommu`` — the container's IOMMU state once VFIO_SET_IOMMU
chose type1 — with its ``vfio_domain`` list (one hw IOMMU domain per IOMMU unit the groups
sit behind, shared by compatible groups) and its ``vfio_dma`` list (what userspace mapped).
- VFIO_CHECK_EXTENSION: TYPE1, TYPE1v2, UNMAP_ALL, UPDATE_VADDR 1; DMA_CC_IOMMU 1 when every
  domain enforces cache coherency (0 with no container state); anything else 0.
- VFIO_IOMMU_GET_INFO: argsz below offsetofend(iova_pgsizes) EINVAL; PGSIZES with the
  smallest common page size bitmap; a capability chain (DMA_AVAIL, then IOVA_RANGE) copied
  after the struct when argsz has room, else argsz raised to what is needed (CAPS set,
  cap_offset 0).
- VFIO_IOMMU_MAP_DMA, in vfio_dma_do_map's order: argsz short or unknown flags EINVAL;
  iova + size - 1 or vaddr + size - 1 wraps EOVERFLOW; size 0 EINVAL; neither READ nor WRITE
  EINVAL (VADDR is left out: EINVAL); iova, vaddr or size not aligned to the smallest page
  size EINVAL; any overlap with an existing mapping EEXIST; no entries left (dma_entry_limit,
  65535) ENOSPC; outside the valid IOVA ranges (domain apertures minus reserved regions)
  EINVAL; then pin_user_pages of the whole range (EFAULT for an unmapped or special — e.g.
  VM_PFNMAP — address), charged to the mm's locked_vm (ENOMEM past RLIMIT_MEMLOCK without
  CAP_IPC_LOCK), and mapped into every domain; a failure unmaps, unpins and uncharges.
- VFIO_IOMMU_UNMAP_DMA, vfio_dma_do_unmap: argsz short or unknown flags EINVAL (dirty bitmap
  and VADDR are left out: EINVAL); iova misaligned EINVAL; UNMAP_ALL with iova or size set
  EINVAL; size 0 or misaligned EINVAL; iova + size - 1 wraps EOVERFLOW; (v2) a range whose
  first or last byte falls inside a mapping without covering it from its start or to its end
  EINVAL — bisecting a mapping is refused, nothing is unmapped; otherwise every mapping inside
  the range goes (none at all is success with size 0) and ``size`` is written back as the
  bytes unmapped. Type1 v1 (VFIO_TYPE1_IOMMU) has no bisect check and stops at a mapping
  that starts before the range.
- attach_group / detach_group (the container's calls): a group already attached EINVAL; a
  new domain on the group's IOMMU unit (reused when one exists for that unit), whose aperture
  or reserved regions must not conflict with existing mappings (EINVAL); existing mappings
  are replayed into a new domain. Detaching the last group of a domain frees the domain; the
  last domain takes every mapping with it (unmap, unpin, uncharge).

Differences from iommufd's compat container (vfio_compat.py) the tests pin down: overlap is
EEXIST here too, but a partial unmap is EINVAL (iommufd: ENOENT and not all-or-nothing);
unmapping an empty range succeeds with size 0 (iommufd: ENOENT); misalignment is against the
domains' page size (iommufd with no domain: 1 byte).

Invariants: mappings never overlap; every mapping is mapped into every domain, with its pages
pinned once (not per domain) and charged once to the mapping process's locked_vm; ``dma_avail``
+ len(dma_list) == DMA_ENTRY_LIMIT; a domain has at least one group.
Units: IOVAs, vaddrs and sizes in bytes; locked_vm in pages.
Locking: ``iommu->lock`` (:attr:`VfioIommu.lock`, a Mutex) protects ``dma_list``,
``domains`` (and each domain's ``groups``), ``dma_avail`` and ``pgsize_bitmap``; it nests
inside the container's ``group_lock`` for attach/detach and inside mmap_lock for reading
user pages (taken by pin_user_pages). The hw page tables have their own (hw/iommu.py).
Leaves out: mdev/emulated IOMMU groups and vfio_pin_pages, dirty page tracking, UPDATE_VADDR,
the migration capability, huge-page batching of pins (a whole range is one pin), the
noiommu driver, the nesting type (removed in 6.x), reserved-pfn (MMIO) mappings.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Any

from ...errors import kerr
from ...hw.iommu import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE, IommuDomain
from ...sim import track
from ...sim.locks import Mutex
from ...sim.track import TrackedDict, TrackedList
from ...uapi import vfio as V
from ..lockdep_assert import lockdep_assert_held
from ..mm import mlock
from ..mm.gup import Pin, pin_user_pages

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1) & ((1 << 64) - 1)
U64_MAX = (1 << 64) - 1
#: module parameter dma_entry_limit (U16_MAX).
DMA_ENTRY_LIMIT = 65535


class VfioDma(track.Tracked):
    """struct vfio_dma: one MAP_DMA, its pin and the process charged for it."""

    def __init__(self, iova: int, size: int, vaddr: int, prot: int, proc: Process) -> None:
        self.iova = iova
        self.size = size
        self.vaddr = vaddr
        self.prot = prot
        self.proc = proc
        self.pin: Pin | None = None
        self.charged = 0  # pages

    @property
    def end(self) -> int:
        return self.iova + self.size

    def __repr__(self) -> str:
        return f"<vfio_dma [{self.iova:#x}, {self.end:#x})>"

    def pieces(self) -> list[tuple[int, int, int]]:
        """(iova, physical address, length) of the pinned pages, in IOVA order."""
        assert self.pin is not None
        out = []
        iova = self.iova
        for s, e in self.pin.extents:
            out.append((iova, s, e - s))
            iova += e - s
        return out


class VfioDomain:
    """struct vfio_domain: a hw domain and the groups attached to it."""

    def __init__(self, domain: IommuDomain, unit: Any) -> None:
        self.domain = domain
        self.unit = unit
        self.groups: list[Any] = TrackedList(label=f"{domain.name}.vfio_groups")
        self.prot = IOMMU_CACHE  # enforce_cache_coherency: the model's units snoop


class VfioIommu(track.Tracked):
    """struct vfio_iommu: the container's type1 state (``container.iommu_data``)."""

    def __init__(self, kernel: Kernel, v2: bool, label: str) -> None:
        self.kernel = kernel
        self.v2 = v2
        self.lock = Mutex(kernel.sched, f"{label}.type1.lock", "vfio_iommu.lock")
        self.domains: list[VfioDomain] = TrackedList(label=f"{label}.type1.domains")
        self.dma_list: dict[int, VfioDma] = TrackedDict(label=f"{label}.type1.dma_list")
        self.dma_avail = DMA_ENTRY_LIMIT
        self.pgsize_bitmap = PAGE_MASK

    # ----- helpers (iommu->lock held) -----------------------------------------------------
    def overlapping(self, start: int, end: int) -> list[VfioDma]:
        """vfio_find_dma's walk: mappings meeting ``[start, end)``, by IOVA."""
        return sorted((d for d in self.dma_list.values() if d.iova < end and start < d.end),
                      key=lambda d: d.iova)

    def find(self, addr: int) -> VfioDma | None:
        hits = self.overlapping(addr, addr + 1)
        return hits[0] if hits else None

    def update_pgsize_bitmap(self) -> None:
        """vfio_update_pgsize_bitmap: the common page sizes, at least PAGE_SIZE."""
        bm = U64_MAX
        for d in self.domains:
            bm &= d.domain.pgsize_bitmap
        if bm & ~PAGE_MASK:
            bm &= PAGE_MASK
            bm |= PAGE_SIZE
        self.pgsize_bitmap = bm

    def pgsize(self) -> int:
        bm = self.pgsize_bitmap
        return bm & -bm

    def iova_list(self) -> list[tuple[int, int]]:
        """iommu->iova_list: inclusive (start, last) ranges every domain can map, minus
        every reserved region."""
        if not self.domains:
            return [(0, U64_MAX)]
        lo = max(d.domain.aperture[0] for d in self.domains)
        hi = min(d.domain.aperture[1] for d in self.domains)
        ranges = [(lo, hi)] if lo <= hi else []
        for d in self.domains:
            for rs, rl, _ in d.domain.reserved:
                nxt = []
                for s, last in ranges:
                    if rl < s or rs > last:
                        nxt.append((s, last))
                        continue
                    if s < rs:
                        nxt.append((s, rs - 1))
                    if rl < last:
                        nxt.append((rl + 1, last))
                ranges = nxt
        return ranges

    def iova_dma_valid(self, start: int, last: int) -> bool:
        """vfio_iommu_iova_dma_valid."""
        return any(s <= start and last <= e for s, e in self.iova_list())


# ----- pin, map, unmap, unpin ---------------------------------------------------------------
def _map_into(domain: IommuDomain, dma: VfioDma) -> None:
    done: list[tuple[int, int]] = []
    try:
        for iova, pa, n in dma.pieces():
            domain.map_pages(iova, pa, n, dma.prot | IOMMU_CACHE)
            done.append((iova, n))
    except OSError:
        for iova, n in done:
            domain.unmap_pages(iova, n)
        domain.iotlb_sync()
        raise


def vfio_pin_map_dma(iommu: VfioIommu, dma: VfioDma) -> None:
    """vfio_pin_map_dma: pin, charge, map into every domain; on failure nothing is left."""
    if iommu.kernel.sched.fault("pin_user_pages"):
        raise kerr(errno.ENOMEM, "VFIO_IOMMU_MAP_DMA: pinning failed (injected)")
    pin = pin_user_pages(dma.proc.mm, dma.vaddr, dma.size, bool(dma.prot & IOMMU_WRITE))
    npages = dma.size // PAGE_SIZE
    try:
        mlock.account_locked_vm(dma.proc, npages, True, "VFIO_IOMMU_MAP_DMA")
    except OSError:
        pin.unpin()
        raise
    dma.pin = pin
    dma.charged = npages
    mapped: list[VfioDomain] = []
    try:
        for d in iommu.domains:
            _map_into(d.domain, dma)
            mapped.append(d)
    except OSError:
        for d in mapped:
            d.domain.unmap_pages(dma.iova, dma.size)
            d.domain.iotlb_sync()
        _unpin(dma)
        raise


def _unpin(dma: VfioDma) -> None:
    if dma.pin is not None:
        dma.pin.unpin()
        dma.pin = None
    if dma.charged:
        mlock.account_locked_vm(dma.proc, dma.charged, False, "vfio_unmap_unpin")
        dma.charged = 0


def vfio_remove_dma(iommu: VfioIommu, dma: VfioDma) -> None:
    """vfio_remove_dma: out of every domain (PTEs, then the IOTLB), unpinned, uncharged."""
    lockdep_assert_held(iommu.lock, "vfio_remove_dma")
    for d in iommu.domains:
        d.domain.unmap_pages(dma.iova, dma.size)
        d.domain.iotlb_sync(dma.iova, dma.size)
    _unpin(dma)
    del iommu.dma_list[dma.iova]
    iommu.dma_avail += 1
    iommu.kernel.track("vfio_dma", -1)


def vfio_iommu_unmap_unpin_all(iommu: VfioIommu) -> None:
    for dma in sorted(iommu.dma_list.values(), key=lambda d: d.iova):
        vfio_remove_dma(iommu, dma)


# ----- open / release (the container's SET_IOMMU and last unset) -----------------------------
def vfio_iommu_type1_open(kernel: Kernel, arg: int, label: str) -> VfioIommu:
    if arg not in (V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU):
        raise kerr(errno.EINVAL, f"vfio_iommu_type1_open: type {arg} is not type1")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "vfio_iommu_type1_open: kzalloc failed (injected)")
    return VfioIommu(kernel, arg == V.VFIO_TYPE1v2_IOMMU, label)


def vfio_iommu_type1_release(iommu: VfioIommu) -> None:
    with iommu.lock:
        vfio_iommu_unmap_unpin_all(iommu)
        for d in list(iommu.domains):
            for g in list(d.groups):
                for dev in g.iommu_devices():
                    dev.iommu.attach(dev.name, dev.iommu.blocked)
            d.domain.free()
        iommu.domains.clear()


def vfio_iommu_type1_check_extension(iommu: VfioIommu | None, arg: int) -> int:
    if arg in (V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU, V.VFIO_UNMAP_ALL,
               V.VFIO_UPDATE_VADDR):
        return 1
    if arg == V.VFIO_DMA_CC_IOMMU:
        if iommu is None:
            return 0
        with iommu.lock:
            return int(all(d.prot & IOMMU_CACHE for d in iommu.domains))
    return 0


# ----- groups ---------------------------------------------------------------------------------
def vfio_iommu_type1_attach_group(iommu: VfioIommu, group: Any) -> None:
    """Attach every device of ``group`` to a domain of its IOMMU unit."""
    devs = group.iommu_devices()
    unit = devs[0].iommu
    with iommu.lock:
        if any(group in d.groups for d in iommu.domains):
            raise kerr(errno.EINVAL, f"attach_group: group {group.id} already attached")
        if iommu.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "vfio_iommu_type1_attach_group: kzalloc failed "
                       "(injected)")
        existing = next((d for d in iommu.domains if d.unit is unit), None)
        if existing is None:
            dom = devs[0].driver.domain_alloc_paging(devs[0], 0, None)
            vd = VfioDomain(dom, unit)
            lo, hi = dom.aperture
            bad = [m for m in iommu.dma_list.values() if m.iova < lo or m.end - 1 > hi]
            bad += [m for rs, rl, _ in dom.reserved for m in iommu.overlapping(rs, rl + 1)]
            if bad:
                dom.free()
                raise kerr(errno.EINVAL, f"attach_group: {bad[0]!r} conflicts with the "
                           f"aperture or reserved regions of {dom.name}")
            replayed: list[VfioDma] = []
            try:
                for m in sorted(iommu.dma_list.values(), key=lambda m: m.iova):
                    _map_into(dom, m)  # vfio_iommu_replay
                    replayed.append(m)
            except OSError:
                for m in replayed:
                    dom.unmap_pages(m.iova, m.size)
                dom.free()
                raise
            iommu.domains.append(vd)
        else:
            vd = existing
        for dev in devs:
            dev.iommu.attach(dev.name, vd.domain)
        vd.groups.append(group)
        iommu.update_pgsize_bitmap()
    iommu.kernel.sched.emit("vfio", "type1_attach_group", group=group.id, domain=vd.domain.name)


def vfio_iommu_type1_detach_group(iommu: VfioIommu, group: Any) -> None:
    with iommu.lock:
        vd = next((d for d in iommu.domains if group in d.groups), None)
        if vd is None:
            return
        for dev in group.iommu_devices():
            dev.iommu.attach(dev.name, dev.iommu.blocked)  # iommu_detach_group
        vd.groups.remove(group)
        if not vd.groups:
            if len(iommu.domains) == 1:
                vfio_iommu_unmap_unpin_all(iommu)
            iommu.domains.remove(vd)
            vd.domain.free()
        iommu.update_pgsize_bitmap()
    iommu.kernel.sched.emit("vfio", "type1_detach_group", group=group.id)


# ----- ioctls ---------------------------------------------------------------------------------
def _offsetofend(struct: type[ctypes.Structure], field: str) -> int:
    f = getattr(struct, field)
    return int(f.offset + f.size)


def _get_info(iommu: VfioIommu, arg: UserArg) -> int:
    minsz = _offsetofend(V.vfio_iommu_type1_info, "iova_pgsizes")
    info = V.vfio_iommu_type1_info.from_buffer_copy(
        arg.read(minsz) + bytes(ctypes.sizeof(V.vfio_iommu_type1_info) - minsz))
    if info.argsz < minsz:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_GET_INFO: argsz {info.argsz} < {minsz}")
    copysz = min(info.argsz, ctypes.sizeof(V.vfio_iommu_type1_info))
    with iommu.lock:
        info.flags = V.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = iommu.pgsize_bitmap
        avail = V.vfio_iommu_type1_info_dma_avail()
        avail.header.id = V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
        avail.header.version = 1
        avail.avail = iommu.dma_avail
        ranges = iommu.iova_list()
    rng_t = V.with_entries(V.vfio_iommu_type1_info_cap_iova_range, len(ranges))
    rng = rng_t()
    rng.header.id = V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
    rng.header.version = 1
    rng.nr_iovas = len(ranges)
    for i, (s, e) in enumerate(ranges):
        rng.iova_ranges[i].start = s
        rng.iova_ranges[i].end = e
    base = ctypes.sizeof(V.vfio_iommu_type1_info)
    a_sz = (ctypes.sizeof(avail) + 7) & ~7
    avail.header.next = base + a_sz
    caps = bytes(avail).ljust(a_sz, b"\0") + bytes(rng)
    info.flags |= V.VFIO_IOMMU_INFO_CAPS
    if info.argsz < base + len(caps):
        info.argsz = base + len(caps)
        info.cap_offset = 0
    else:
        arg.write(caps, base)
        info.cap_offset = base
    arg.write(bytes(info)[:copysz])
    return 0


def _map_dma(iommu: VfioIommu, proc: Process, arg: UserArg) -> int:
    minsz = _offsetofend(V.vfio_iommu_type1_dma_map, "size")
    m = arg.copy_from_user(V.vfio_iommu_type1_dma_map)
    mask = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE | V.VFIO_DMA_MAP_FLAG_VADDR
    if m.argsz < minsz or m.flags & ~mask:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA: argsz {m.argsz} or flags {m.flags:#x}")
    iova, vaddr, size = int(m.iova), int(m.vaddr), int(m.size)
    if not size:
        raise kerr(errno.EINVAL, "VFIO_IOMMU_MAP_DMA: size 0")
    wraps = iova + size - 1 > U64_MAX or vaddr + size - 1 > U64_MAX
    if wraps and iommu.kernel.profile.vfio_type1_overflow_checks:  # 6.19's checks
        raise kerr(errno.EOVERFLOW, f"VFIO_IOMMU_MAP_DMA: iova {iova:#x} or vaddr "
                   f"{vaddr:#x} + size {size:#x} wraps")
    prot = (IOMMU_WRITE if m.flags & V.VFIO_DMA_MAP_FLAG_WRITE else 0) | \
        (IOMMU_READ if m.flags & V.VFIO_DMA_MAP_FLAG_READ else 0)
    if m.flags & V.VFIO_DMA_MAP_FLAG_VADDR or not prot:
        raise kerr(errno.EINVAL, "VFIO_IOMMU_MAP_DMA: neither READ nor WRITE (or VADDR, "
                   "not modelled)")
    with iommu.lock:
        pg = iommu.pgsize()
        if (size | iova | vaddr) & (pg - 1):
            raise kerr(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA: iova {iova:#x} vaddr {vaddr:#x} "
                       f"size {size:#x} not aligned to {pg:#x}")
        if wraps:  # before 6.19: the overflow test after the alignment check, EINVAL
            raise kerr(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA: iova {iova:#x} or vaddr "
                       f"{vaddr:#x} + size {size:#x} wraps")
        if iommu.overlapping(iova, iova + size):
            raise kerr(errno.EEXIST, f"VFIO_IOMMU_MAP_DMA: [{iova:#x}, +{size:#x}) overlaps "
                       f"{iommu.overlapping(iova, iova + size)[0]!r}")
        if not iommu.dma_avail:
            raise kerr(errno.ENOSPC, "VFIO_IOMMU_MAP_DMA: dma_entry_limit reached")
        if not iommu.iova_dma_valid(iova, iova + size - 1):
            raise kerr(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA: [{iova:#x}, +{size:#x}) outside "
                       "the valid IOVA ranges")
        if iommu.kernel.sched.fault("kzalloc"):
            raise kerr(errno.ENOMEM, "VFIO_IOMMU_MAP_DMA: kzalloc failed (injected)")
        dma = VfioDma(iova, size, vaddr, prot, proc)
        dma.track_init(f"vfio_dma@{iova:#x}")
        vfio_pin_map_dma(iommu, dma)
        iommu.dma_list[iova] = dma
        iommu.dma_avail -= 1
        iommu.kernel.track("vfio_dma", +1)
    iommu.kernel.sched.emit("vfio", "type1_map", iova=iova, size=size, prot=prot)
    return 0


def _unmap_dma(iommu: VfioIommu, arg: UserArg) -> int:
    minsz = _offsetofend(V.vfio_iommu_type1_dma_unmap, "size")
    u = arg.copy_from_user(V.vfio_iommu_type1_dma_unmap)
    known = V.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | V.VFIO_DMA_UNMAP_FLAG_ALL | \
        V.VFIO_DMA_UNMAP_FLAG_VADDR
    if u.argsz < minsz or u.flags & ~known:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_UNMAP_DMA: argsz {u.argsz} or flags "
                   f"{u.flags:#x}")
    if u.flags & (V.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | V.VFIO_DMA_UNMAP_FLAG_VADDR):
        raise kerr(errno.EINVAL, "VFIO_IOMMU_UNMAP_DMA: dirty bitmap / VADDR not modelled")
    unmap_all = bool(u.flags & V.VFIO_DMA_UNMAP_FLAG_ALL)
    iova, size = int(u.iova), int(u.size)
    unmapped = 0
    with iommu.lock:
        pg = iommu.pgsize()
        if iova & (pg - 1):
            raise kerr(errno.EINVAL, f"VFIO_IOMMU_UNMAP_DMA: iova {iova:#x} not aligned")
        if unmap_all:
            if iova or size:
                raise kerr(errno.EINVAL, "VFIO_IOMMU_UNMAP_DMA: UNMAP_ALL with iova/size")
            end = U64_MAX + 1
        else:
            if not size or size & (pg - 1):
                raise kerr(errno.EINVAL, f"VFIO_IOMMU_UNMAP_DMA: size {size:#x} is 0 or "
                           "not aligned")
            if iova + size - 1 > U64_MAX:
                raise kerr(errno.EOVERFLOW, f"VFIO_IOMMU_UNMAP_DMA: {iova:#x} + {size:#x} "
                           "wraps")
            end = iova + size
            if iommu.v2:
                first, last = iommu.find(iova), iommu.find(end - 1)
                if first is not None and first.iova != iova or \
                        last is not None and last.end != end:
                    raise kerr(errno.EINVAL, f"VFIO_IOMMU_UNMAP_DMA: [{iova:#x}, {end:#x}) "
                               "would bisect a mapping")
        for dma in iommu.overlapping(iova, end):
            if not iommu.v2 and iova > dma.iova:
                break
            unmapped += dma.size
            vfio_remove_dma(iommu, dma)
    u.size = unmapped
    arg.copy_to_user(u)
    iommu.kernel.sched.emit("vfio", "type1_unmap", iova=iova, size=unmapped)
    return 0


def vfio_iommu_type1_ioctl(iommu: VfioIommu, proc: Process, cmd: int, arg: UserArg) -> int:
    """vfio_iommu_type1_ioctl: the container's ioctls once type1 is set."""
    if cmd == V.VFIO_CHECK_EXTENSION:
        return vfio_iommu_type1_check_extension(iommu, arg.as_int())
    if cmd == V.VFIO_IOMMU_GET_INFO:
        return _get_info(iommu, arg)
    if cmd == V.VFIO_IOMMU_MAP_DMA:
        return _map_dma(iommu, proc, arg)
    if cmd == V.VFIO_IOMMU_UNMAP_DMA:
        return _unmap_dma(iommu, arg)
    raise kerr(errno.ENOTTY, f"vfio_iommu_type1_ioctl: {cmd:#x} is not a type1 ioctl")
