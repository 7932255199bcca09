"""The VFIO type1 container ioctls on an iommufd (drivers/iommu/iommufd/vfio_compat.c).

iommufd answers the legacy container API on its own fd, acting on the *compat IOAS*
(``ictx.vfio_ioas``: set by IOMMU_VFIO_IOAS or made when VFIO attaches a group):
- VFIO_GET_API_VERSION: VFIO_API_VERSION (0);
- VFIO_CHECK_EXTENSION: 1 for TYPE1, TYPE1v2 and UNMAP_ALL; DMA_CC_IOMMU from the compat
  IOAS's HWPTs (ENODEV without one); 0 for anything else;
- VFIO_SET_IOMMU: TYPE1 or TYPE1v2 (else EINVAL), ENODEV without a compat IOAS; TYPE1 disables
  large pages so unmaps may cut areas;
- VFIO_IOMMU_GET_INFO: argsz below the minimum EINVAL; the page sizes and the DMA_AVAIL and
  IOVA_RANGE capabilities, each 8-byte aligned (argsz grows to what all of them need);
- VFIO_IOMMU_MAP_DMA: argsz too small or unknown flags EINVAL; always a FIXED iova;
- VFIO_IOMMU_UNMAP_DMA: argsz/flags EINVAL; UNMAP_FLAG_ALL needs iova = size = 0; with large
  pages disabled the range is first cut out of its areas; ``size`` returns the bytes unmapped;
- anything else ENOTTY (ENOIOCTLCMD).

Invariants, units, locking: those of ioas.py and io_pagetable.py (this module keeps no state).
Leaves out: VFIO_IOMMU_DIRTY_PAGES (ENOTTY, as in the kernel), VFIO_DMA_MAP_FLAG_VADDR.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....uapi import vfio as V
from ...mm.mm import PAGE
from .io_pagetable import PagesSlice
from .ioas import IOMMU_CACHE, IOMMU_READ, IOMMU_WRITE, Ioas
from .main import IommufdCtx
from .pages import ULONG_MAX, iopt_alloc_user_pages

if TYPE_CHECKING:
    from ...fs.process import Process
    from ...fs.uaccess import UserArg

U32_MAX = 0xFFFFFFFF


def get_compat_ioas(ictx: IommufdCtx) -> Ioas:
    """get_compat_ioas: the compat IOAS with a users reference, else ENODEV."""
    ioas = ictx.vfio_ioas
    if ioas is None or ioas.users.get() == 0:
        raise kerr(errno.ENODEV, "no compat IOAS (IOMMU_VFIO_IOAS_SET, or attach a device)")
    ioas.get()
    return ioas  # type: ignore[no-any-return]


def _minsz(struct: type[ctypes.Structure], last: str) -> int:
    f = getattr(struct, last)
    return int(f.offset + f.size)


def vfio_map_dma(ictx: IommufdCtx, proc: Process, arg: UserArg) -> int:
    """iommufd_vfio_map_dma."""
    minsz = _minsz(V.vfio_iommu_type1_dma_map, "size")
    m = V.vfio_iommu_type1_dma_map.from_buffer_copy(arg.read(minsz))
    ok = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE
    if m.argsz < minsz or m.flags & ~ok:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_MAP_DMA: argsz {m.argsz} < {minsz} or unknown "
                   f"flags {m.flags:#x}")
    prot = IOMMU_CACHE
    if m.flags & V.VFIO_DMA_MAP_FLAG_READ:
        prot |= IOMMU_READ
    if m.flags & V.VFIO_DMA_MAP_FLAG_WRITE:
        prot |= IOMMU_WRITE
    ioas = get_compat_ioas(ictx)
    try:
        pages = iopt_alloc_user_pages(proc, m.vaddr, m.size, bool(prot & IOMMU_WRITE),
                                      ictx.account_mode)
        try:
            ioas.iopt.map_pages([PagesSlice(pages, m.vaddr - pages.base, m.size)], m.size,
                                m.iova, prot, m.vaddr)
        finally:
            pages.put()
    finally:
        ictx.put_object(ioas)
    return 0


def vfio_unmap_dma(ictx: IommufdCtx, arg: UserArg) -> int:
    """iommufd_vfio_unmap_dma."""
    minsz = _minsz(V.vfio_iommu_type1_dma_unmap, "size")
    u = V.vfio_iommu_type1_dma_unmap.from_buffer_copy(arg.read(minsz))
    if u.argsz < minsz or u.flags & ~V.VFIO_DMA_UNMAP_FLAG_ALL:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_UNMAP_DMA: argsz {u.argsz} < {minsz} or "
                   f"unsupported flags {u.flags:#x}")
    ioas = get_compat_ioas(ictx)
    try:
        iopt = ioas.iopt
        if u.flags & V.VFIO_DMA_UNMAP_FLAG_ALL:
            if u.iova or u.size:
                raise kerr(errno.EINVAL, "VFIO_IOMMU_UNMAP_DMA: FLAG_ALL with an iova or size")
            unmapped = iopt.unmap_all()
        else:
            if iopt.disable_large_pages:
                iopt.cut_iova([u.iova + u.size - 1, u.iova - 1] if u.iova
                              else [u.iova + u.size - 1])
            unmapped = iopt.unmap_iova(u.iova, u.size)
        u.size = unmapped
        arg.write(bytes(u)[:minsz])
    finally:
        ictx.put_object(ioas)
    return 0


def vfio_check_extension(ictx: IommufdCtx, ext: int) -> int:
    """iommufd_vfio_check_extension."""
    if ext in (V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU, V.VFIO_UNMAP_ALL):
        return 1
    if ext == V.VFIO_DMA_CC_IOMMU:
        ioas = get_compat_ioas(ictx)
        try:
            coherent = all(getattr(h, "enforce_cache_coherency", True) for h in ioas.hwpt_list)
        finally:
            ictx.put_object(ioas)
        return int(coherent)
    return 0


def vfio_set_iommu(ictx: IommufdCtx, kind: int) -> int:
    """iommufd_vfio_set_iommu: TYPE1 disables large pages (unmaps may then cut areas)."""
    if kind not in (V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU):
        raise kerr(errno.EINVAL, f"VFIO_SET_IOMMU: type {kind} is not TYPE1 or TYPE1v2")
    ioas = get_compat_ioas(ictx)
    try:
        if kind == V.VFIO_TYPE1_IOMMU:
            iopt = ioas.iopt
            with iopt.domains_rwsem.write(), iopt.iova_rwsem.write():
                if not iopt.disable_large_pages:
                    if iopt.domains and iopt.areas:
                        raise kerr(errno.EINVAL, "VFIO_SET_IOMMU(TYPE1): domains already "
                                   "have pages")
                    iopt.disable_large_pages = True
                    try:
                        iopt.calculate_iova_alignment()
                    except OSError:
                        iopt.disable_large_pages = False
                        raise
    finally:
        ictx.put_object(ioas)
    return 0


def _pagesizes(ioas: Ioas) -> int:
    """iommufd_get_pagesizes."""
    bitmap = ULONG_MAX
    for d in ioas.iopt.domains:
        bitmap &= d.pgsize_bitmap
    if bitmap & (PAGE - 1):
        bitmap &= ~(PAGE - 1) & ULONG_MAX
        bitmap |= PAGE
    return max(bitmap, ioas.iopt.iova_alignment)


def vfio_get_info(ictx: IommufdCtx, arg: UserArg) -> int:
    """iommufd_vfio_iommu_get_info: the info, then the DMA_AVAIL and IOVA_RANGE capabilities
    where argsz has room for them, each starting 8-byte aligned (cap_size = ALIGN(cap_size,
    sizeof(u64)), "vfio: align capability structures", 6.6: the 12-byte DMA_AVAIL takes 16,
    its 4 padding bytes left as the user had them). A capability's ``next`` is set once
    argsz reaches where the following one starts; ``cap_offset`` only when all of them fit;
    argsz reports what all of them need."""
    minsz = _minsz(V.vfio_iommu_type1_info, "iova_pgsizes")
    info = V.vfio_iommu_type1_info.from_buffer_copy(
        arg.read(minsz).ljust(ctypes.sizeof(V.vfio_iommu_type1_info), b"\0"))
    if info.argsz < minsz:
        raise kerr(errno.EINVAL, f"VFIO_IOMMU_GET_INFO: argsz {info.argsz} < {minsz}")
    minsz = min(info.argsz, ctypes.sizeof(V.vfio_iommu_type1_info))
    ioas = get_compat_ioas(ictx)
    try:
        info.flags = V.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = _pagesizes(ioas)
        info.cap_offset = 0
        with ioas.iopt.iova_rwsem.read():
            total = ctypes.sizeof(V.vfio_iommu_type1_info)
            last_cap: int | None = None
            for fill in (_fill_cap_dma_avail, _fill_cap_iova):
                room = info.argsz - total if info.argsz > total else 0
                cap_size = fill(ioas, arg, total, room)
                cap_size = (cap_size + 7) & ~7
                if last_cap is not None and info.argsz >= total:
                    arg.write(total.to_bytes(4, "little"),
                              last_cap + V.vfio_info_cap_header.next.offset)
                last_cap = total
                total += cap_size
        if info.argsz >= total:
            info.cap_offset = ctypes.sizeof(V.vfio_iommu_type1_info)
        info.argsz = total
        info.flags |= V.VFIO_IOMMU_INFO_CAPS
        arg.write(bytes(info)[:minsz])
    finally:
        ictx.put_object(ioas)
    return 0


def _fill_cap_dma_avail(ioas: Ioas, arg: UserArg, off: int, avail: int) -> int:
    """iommufd_fill_cap_dma_avail: U32_MAX entries (iommufd's limit is the memory cgroup's),
    written at ``off`` when ``avail`` bytes hold it; returns its (unaligned) size."""
    cap = V.vfio_iommu_type1_info_dma_avail(avail=U32_MAX)
    cap.header.id = V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
    cap.header.version = 1
    if avail >= ctypes.sizeof(cap):
        arg.write(bytes(cap), off)
    return ctypes.sizeof(cap)


def _fill_cap_iova(ioas: Ioas, arg: UserArg, off: int, avail: int) -> int:
    """iommufd_fill_cap_iova: the IOAS's usable ranges (the holes in its reserved itree).
    Each range is written when ``avail`` reaches it, the header (with nr_iovas) only when
    all of them fit; returns struct_size(cap, iova_ranges, nr_iovas)."""
    ranges = ioas.iopt.iova_ranges()
    cap = V.vfio_iommu_type1_info_cap_iova_range(nr_iovas=len(ranges))
    cap.header.id = V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE
    cap.header.version = 1
    head, rsz = ctypes.sizeof(cap), ctypes.sizeof(V.vfio_iova_range)
    for i, (start, last) in enumerate(ranges):
        if avail >= head + rsz * (i + 1):
            arg.write(bytes(V.vfio_iova_range(start=start, end=last)), off + head + rsz * i)
    size = head + rsz * len(ranges)
    if avail >= size:
        arg.write(bytes(cap), off)
    return size


def iommufd_vfio_ioctl(ictx: IommufdCtx, proc: Process, cmd: int, arg: UserArg) -> int:
    """iommufd_vfio_ioctl: the container ioctls; anything else ENOTTY."""
    if cmd == V.VFIO_GET_API_VERSION:
        return V.VFIO_API_VERSION
    if cmd == V.VFIO_SET_IOMMU:
        return vfio_set_iommu(ictx, arg.as_int())
    if cmd == V.VFIO_CHECK_EXTENSION:
        return vfio_check_extension(ictx, arg.as_int())
    if cmd == V.VFIO_IOMMU_GET_INFO:
        return vfio_get_info(ictx, arg)
    if cmd == V.VFIO_IOMMU_MAP_DMA:
        return vfio_map_dma(ictx, proc, arg)
    if cmd == V.VFIO_IOMMU_UNMAP_DMA:
        return vfio_unmap_dma(ictx, arg)
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: neither an iommufd nor a VFIO container ioctl")
