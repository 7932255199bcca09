"""vfio-pci's dma-buf export of BAR ranges (drivers/vfio/pci/vfio_pci_dmabuf.c, 6.19; the
7.1 revoke series: dma_buf_attach_revocable, wait for invalidation to complete, no pin op).

What it models:
- :func:`vfio_pci_core_feature_dma_buf`: VFIO_DEVICE_FEATURE_DMA_BUF (GET only), in the
  kernel's order: (1) the driver has no ``get_dmabuf_phys`` op EOPNOTSUPP; (2)
  vfio_check_feature — SET asked EINVAL, PROBE returns 0, neither GET nor SET EINVAL, argsz
  below the fixed struct EINVAL; (3) nr_ranges 0 or flags != 0 EINVAL; (4) region_index >=
  VFIO_PCI_ROM_REGION_INDEX ENODEV, and (profile ``vfio_pci_dma_buf_barmap_check``: 7.1, and
  7.0.y) a BAR vfio holds no iomap of — an unimplemented one — ENODEV; (5)
  validate_dmabuf_input: a range of length 0 or not page aligned EINVAL, the total
  overflowing size_t or reaching DMA_IOVA_USE_SWIOTLB (bit 63) EINVAL; then the allocations
  (fault points); (6) get_dmabuf_phys: the BAR has no p2pdma provider EINVAL (the kernel
  checks this *before* the ranges against the BAR: KERNEL.md §2 lists it after — both
  EINVAL; only a BAR without a provider and an overflowing range tell them apart, and the
  source wins; with the barmap check an unimplemented BAR never gets here), offset + length
  overflow EOVERFLOW, past the BAR EINVAL; (7) vfio_device_try_get_registration fails ENODEV;
  then dma_buf_export, the buffer joins ``vdev.dmabufs`` under memory_lock (write) + resv
  with ``revoked = !memory enabled``, and dma_buf_fd installs it. Success returns the fd;
  the buffer's size is the sum of the ranges.
- the exporter ops (:data:`VFIO_PCI_DMABUF_OPS`; :data:`VFIO_PCI_DMABUF_OPS_PIN_REFUSED`
  when the profile has ``revocable_pin_refused``, 6.19-rc6 .. 7.0): attach refuses an
  importer without peer2peer EOPNOTSUPP, a revoked buffer ENODEV and (profile
  ``dma_buf_attach_revocable``, 7.1) an importer that cannot be revoked EOPNOTSUPP; map while
  revoked ENODEV, else the phys_vec list through dma_buf_phys_vec_to_sgt for the importer
  (BUS_ADDR through a switch, THRU_HOST_BRIDGE through the root; NOT_SUPPORTED EINVAL); no
  mmap, no vmap; release drops the buffer from the device's list under memory_lock and puts
  the registration.
- :func:`vfio_pci_dma_buf_move` (memory_lock held for write, asserted): every buffer of the
  device whose file is still live and whose state differs is revoked (the core's revoke
  contract, kernel/dma_buf/core.py ``revoke``: mark, invalidate, and from 7.1 wait for fences
  then up to 1 s for unmaps) or un-revoked (mark, invalidate: the kernel notifies on both
  edges; 7.1 waits for fences there too). Un-revoke never remaps an importer.
- :func:`vfio_pci_dma_buf_cleanup` (device close): permanent revoke; each buffer leaves the
  list, forgets its device (``vdev = None``) and drops its registration; its fd lives on,
  dead (attach ENODEV, map ENODEV).
- :func:`vfio_pci_dma_buf_iommufd_map`, the private link iommufd calls under resv: not a
  vfio-pci buffer EOPNOTSUPP, revoked ENODEV, more than one range EOPNOTSUPP, else the one
  phys_vec. Registered with kernel/iommu/iommufd/dmabuf.py's register_iommufd_map.

Lock order: vfio ``memory_lock`` (rw) → the buffer's resv → iommufd's pages mutex (taken by
iommufd's invalidate callback inside the revoke).

Invariants: a buffer is on ``vdev.dmabufs`` from export until its release or the device's
cleanup, whichever comes first (the file refcount keeps them apart); ``vdev is None`` iff it
was cleaned up (then ``revoked`` is true forever); every vector lies inside its BAR; ``size``
is the sum of the vectors; a revoked buffer is never mapped anew.
Units: bytes; ``phys_vec`` are (CPU physical address, length); ``DMA_IOVA_USE_SWIOTLB`` a bit.

Which lock protects which field (sim/track.py):
- ``VfioPciDmaBuf.revoked`` (location ``<buf>.vfio``, part ``_REVOKED``): written under the
  resv lock with memory_lock held for write (move, cleanup, export's initial state); read
  under resv by map and iommufd_map, under memory_lock by move; attach reads it without a
  lock, as the kernel does
  (a marked read here, benign: map checks again under resv);
- ``VfioPciDmaBuf.vdev`` (part ``_VDEV``): written by cleanup under memory_lock (write) +
  resv while it holds a file reference; read by release after the last put (ordered by the
  file refcount, an atomic with release/acquire);
- ``vdev.dmabufs`` (the core's list): memory_lock held for write for every change; move and
  cleanup walk it under the same lock;
- ``dmabuf``, ``phys_vec``, ``provider``, ``nr_ranges``, ``size``: written before the buffer
  is published, read-only afterwards.

Model deviations: vfio_pci_dma_buf_move does not take a file reference around a buffer
(get_file_active/fput): the model's fput releases synchronously, and a release under the
held memory_lock would deadlock where the kernel defers __fput; a buffer whose refcount
already reached zero is skipped, as get_file_active would. The 7.1 kref/completion are the
core's ``wait_for_unmaps``.
Leaves out: the vfio BAR mmap through a dma-buf (an RFC), the runtime-PM paths (the core
calls move), dma-buf fdinfo, nvgrace-gpu's own get_dmabuf_phys.
"""

from __future__ import annotations

import ctypes
import errno
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ....errors import kerr
from ....sim import kinds, track
from ....sim.fields import Plain
from ....uapi import vfio as V
from ...dma.p2pdma import (
    PCI_P2PDMA_MAP_BUS_ADDR,
    p2pdma_provider,
    pcim_p2pdma_provider,
)
from ...dma.phys_vec import dma_buf_free_sgt, dma_buf_phys_vec_to_sgt, phys_vec
from ...dma_buf import core
from ...dma_buf.core import (
    REVOCABLE,
    DmaBuf,
    DmaBufAttachment,
    DmaBufOps,
    DmaMapping,
    DmaRange,
)
from ...dma_buf.resv import DMA_RESV_USAGE_BOOKKEEP
from ...iommu.iommufd.dmabuf import register_iommufd_map
from ...lockdep_assert import lockdep_assert_held_write
from ...mm.mm import PAGE

if TYPE_CHECKING:
    from ...fs.uaccess import UserArg

kinds.register("sgt-page-access", "dma-buf")

#: include/linux/dma-mapping.h: the top bit of a dma_iova_state size.
DMA_IOVA_USE_SWIOTLB = 1 << 63
SIZE_MAX = (1 << 64) - 1
U64_MAX = (1 << 64) - 1
_RANGE_SIZE = ctypes.sizeof(V.vfio_region_dma_range)
_FIXED_SIZE = ctypes.sizeof(V.vfio_device_feature_dma_buf)
#: sizeof(struct vfio_device_feature): where the feature's payload starts in the argument.
FEATURE_HDR_SIZE = ctypes.sizeof(V.vfio_device_feature)

_REVOKED = (0, 1)
_VDEV = (1, 2)


# ----- the driver's ops (struct vfio_pci_device_ops) ----------------------------------------
GetDmabufPhys = Callable[[Any, int, list[tuple[int, int]]],
                         tuple[p2pdma_provider, list[phys_vec]]]


@dataclass(frozen=True)
class VfioPciDeviceOps:
    """``struct vfio_pci_device_ops``: what a vfio-pci driver lets the core do; a driver
    without ``get_dmabuf_phys`` cannot export (EOPNOTSUPP)."""

    get_dmabuf_phys: GetDmabufPhys | None = None


def vfio_pci_core_fill_phys_vec(ranges: list[tuple[int, int]], start: int,
                                length: int) -> list[phys_vec]:
    """vfio_pci_core_fill_phys_vec: each (offset, length) as a physical vector of the BAR
    ``[start, start + length)``: length 0 EINVAL, overflow EOVERFLOW, past the BAR EINVAL."""
    max_addr = start + length
    out: list[phys_vec] = []
    for off, n in ranges:
        if not n:
            raise kerr(errno.EINVAL, "VFIO_DEVICE_FEATURE_DMA_BUF: a range of length 0")
        paddr = start + off
        if paddr > U64_MAX or paddr + n > U64_MAX:
            raise kerr(errno.EOVERFLOW, f"VFIO_DEVICE_FEATURE_DMA_BUF: offset {off:#x} + "
                       f"length {n:#x} overflows (check_add_overflow)")
        if paddr + n > max_addr:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE_DMA_BUF: [{off:#x}, +{n:#x}) "
                       f"past the BAR's {length:#x} bytes")
        out.append(phys_vec(paddr, n))
    return out


def vfio_pci_core_get_dmabuf_phys(vdev: Any, region_index: int,
                                  ranges: list[tuple[int, int]]
                                  ) -> tuple[p2pdma_provider, list[phys_vec]]:
    """vfio_pci_core_get_dmabuf_phys: the BAR's provider (none EINVAL), then the vectors."""
    func = vdev.pdev.func
    provider = pcim_p2pdma_provider(func, region_index)
    if provider is None:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE_DMA_BUF: BAR{region_index} of "
                   f"{func.bdf} has no p2pdma provider")
    bar = func.bars[region_index]
    return provider, vfio_pci_core_fill_phys_vec(ranges, bar.base, bar.size)


#: vfio-pci proper (drivers/vfio/pci/vfio_pci.c's vfio_pci_dev_ops).
VFIO_PCI_DEV_OPS = VfioPciDeviceOps(get_dmabuf_phys=vfio_pci_core_get_dmabuf_phys)


# ----- the export's private data (struct vfio_pci_dma_buf) --------------------------------
class VfioPciDmaBuf(track.Tracked):
    """struct vfio_pci_dma_buf: ``dmabuf.priv``."""

    revoked = Plain[bool](_REVOKED)
    vdev = Plain[Any](_VDEV)

    def __init__(self, vdev: Any, nr_ranges: int, size: int) -> None:
        self._vdev = vdev
        self._revoked = False
        self.nr_ranges = nr_ranges
        self.size = size
        self.phys_vec: list[phys_vec] = []
        self.provider: p2pdma_provider | None = None
        self.dmabuf: DmaBuf | None = None

    def __repr__(self) -> str:
        return f"<vfio_pci_dma_buf {self.dmabuf.name if self.dmabuf else '?'}>"

    def set_revoked(self, revoked: bool, what: str) -> None:
        assert self.dmabuf is not None
        self.dmabuf.resv.assert_held(what)
        self.revoked = revoked


# ----- registration (vfio_device_try_get_registration / put) -------------------------------
def _try_get_registration(vdev: Any) -> bool:
    fn = getattr(vdev, "try_get_registration", None)
    return bool(fn()) if fn is not None else True


def _put_registration(vdev: Any) -> None:
    fn = getattr(vdev, "put_registration", None)
    if fn is not None:
        fn()


def _memory_enabled(vdev: Any) -> bool:
    """__vfio_pci_memory_enabled (the core's; memory_lock held)."""
    return bool(vdev.memory_enabled())


# ----- dma_buf_ops ---------------------------------------------------------------------------
def vfio_pci_dma_buf_attach(dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
    priv: VfioPciDmaBuf = dmabuf.priv
    if not attach.peer2peer:
        raise kerr(errno.EOPNOTSUPP, f"attach: {dmabuf.name} is a vfio-pci BAR; the importer "
                   "must allow peer2peer")
    track.read_once(priv, *_REVOKED)  # no resv lock here (dma_buf_dynamic_attach)
    if priv._revoked:
        raise kerr(errno.ENODEV, f"attach: {dmabuf.name} is revoked")
    if dmabuf.kernel.profile.dma_buf_attach_revocable and \
            not core.dma_buf_attach_revocable(attach):
        raise kerr(errno.EOPNOTSUPP, f"attach: {dmabuf.name} may be revoked and the importer "
                   "has no invalidate_mappings (dma_buf_attach_revocable)")


def vfio_pci_dma_buf_pin(attach: DmaBufAttachment) -> None:
    """6.19-rc6 .. 7.0: pinned importers are refused."""
    raise kerr(errno.EOPNOTSUPP, f"pin: {attach.dmabuf.name} (vfio-pci) cannot be pinned")


def vfio_pci_dma_buf_unpin(attach: DmaBufAttachment) -> None:
    pass


def vfio_pci_dma_buf_map(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    buf = attach.dmabuf
    priv: VfioPciDmaBuf = buf.priv
    buf.resv.assert_held("vfio_pci_dma_buf_map")
    if priv.revoked:
        raise kerr(errno.ENODEV, f"map: {buf.name} is revoked")
    provider = priv.provider
    assert provider is not None
    importer = provider.p2pdma.topology.functions.get(attach.dev)  # None: not PCI

    def flag(msg: str) -> None:
        buf.kernel.sched.violation("sgt-page-access", f"{attach.dev}: {msg}")

    sgt = dma_buf_phys_vec_to_sgt(importer, provider, list(priv.phys_vec), priv.size,
                                  on_page_access=flag)
    bus = sgt.map_type == PCI_P2PDMA_MAP_BUS_ADDR
    off = provider.bus_offset
    ranges = [DmaRange(a, n, a - off if bus else a) for a, n in sgt.for_each_sgtable_dma_sg()]
    return DmaMapping(ranges, sgt)


def vfio_pci_dma_buf_unmap(attach: DmaBufAttachment, mapping: DmaMapping,
                           direction: int) -> None:
    dma_buf_free_sgt(mapping.sgt)


def vfio_pci_dma_buf_release(dmabuf: DmaBuf) -> None:
    """Either this or the cleanup takes the buffer off the list; the refcount keeps them
    apart."""
    priv: VfioPciDmaBuf = dmabuf.priv
    vdev = priv.vdev
    if vdev is not None:
        with vdev.memory_lock.write():
            if priv in vdev.dmabufs:
                vdev.dmabufs.remove(priv)
        _put_registration(vdev)
    dmabuf.kernel.sched.emit("vfio", "dma_buf_release", buf=dmabuf.name)


VFIO_PCI_DMABUF_OPS = DmaBufOps(attach=vfio_pci_dma_buf_attach,
                                map_dma_buf=vfio_pci_dma_buf_map,
                                unmap_dma_buf=vfio_pci_dma_buf_unmap,
                                release=vfio_pci_dma_buf_release,
                                memory_model=REVOCABLE, can_unrevoke=True, exp_name="vfio-pci",
                                mapping_types=("pal", "sgt"))
VFIO_PCI_DMABUF_OPS_PIN_REFUSED = replace(VFIO_PCI_DMABUF_OPS, pin=vfio_pci_dma_buf_pin,
                                          unpin=vfio_pci_dma_buf_unpin)


def is_vfio_pci_dmabuf(buf: DmaBuf) -> bool:
    return buf.ops is VFIO_PCI_DMABUF_OPS or buf.ops is VFIO_PCI_DMABUF_OPS_PIN_REFUSED


# ----- the private link to iommufd ---------------------------------------------------------
def vfio_pci_dma_buf_iommufd_map(attach: DmaBufAttachment) -> phys_vec:
    """vfio_pci_dma_buf_iommufd_map (resv held): the buffer's one physical range."""
    buf = attach.dmabuf
    buf.resv.assert_held("vfio_pci_dma_buf_iommufd_map")
    if not is_vfio_pci_dmabuf(buf):
        raise kerr(errno.EOPNOTSUPP, f"vfio_pci_dma_buf_iommufd_map: {buf.name} is not a "
                   "vfio-pci dma-buf")
    priv: VfioPciDmaBuf = buf.priv
    if priv.revoked:
        raise kerr(errno.ENODEV, f"vfio_pci_dma_buf_iommufd_map: {buf.name} is revoked")
    if priv.nr_ranges != 1:
        raise kerr(errno.EOPNOTSUPP, f"vfio_pci_dma_buf_iommufd_map: {buf.name} has "
                   f"{priv.nr_ranges} ranges; iommufd takes one")
    return priv.phys_vec[0]


register_iommufd_map(VFIO_PCI_DMABUF_OPS, vfio_pci_dma_buf_iommufd_map)
register_iommufd_map(VFIO_PCI_DMABUF_OPS_PIN_REFUSED, vfio_pci_dma_buf_iommufd_map)


# ----- VFIO_DEVICE_FEATURE_DMA_BUF ---------------------------------------------------------
def vfio_check_feature(flags: int, argsz: int, supported_ops: int, minsz: int) -> int:
    """vfio_check_feature (include/linux/vfio.h): 1 to go on, 0 for a PROBE, or raise."""
    rw = V.VFIO_DEVICE_FEATURE_GET | V.VFIO_DEVICE_FEATURE_SET
    if flags & rw & ~supported_ops:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE: {flags & rw & ~supported_ops:#x} "
                   "not supported by this feature")
    if flags & V.VFIO_DEVICE_FEATURE_PROBE:
        return 0
    if not flags & rw:
        raise kerr(errno.EINVAL, "VFIO_DEVICE_FEATURE: neither GET nor SET without PROBE")
    if argsz < minsz:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE: argsz {argsz} below {minsz}")
    return 1


def validate_dmabuf_input(ranges: list[tuple[int, int]]) -> int:
    """validate_dmabuf_input: the total length, or EINVAL."""
    length = 0
    for off, n in ranges:
        if not n or off % PAGE or n % PAGE:
            raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE_DMA_BUF: range [{off:#x}, "
                       f"+{n:#x}) is empty or not page aligned")
        length += n
        if length > SIZE_MAX:
            raise kerr(errno.EINVAL, "VFIO_DEVICE_FEATURE_DMA_BUF: total length overflows")
    if length & DMA_IOVA_USE_SWIOTLB:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE_DMA_BUF: total length {length:#x} "
                   "too large (DMA_IOVA_USE_SWIOTLB)")
    return length


def _barmap_ok(vdev: Any, index: int) -> bool:
    """!IS_ERR(vfio_pci_core_get_iomap(vdev, index)) (7.3; 7.1's
    vfio_pci_core_setup_barmap() == 0): vfio requested and iomapped the BAR — it fails for a
    BAR of length 0 (unimplemented: pci_iomap returns NULL). The model's BARs never conflict
    with another claimant, so an implemented BAR always succeeds."""
    return vdev.pdev.func.bars.get(index) is not None


def _fault(vdev: Any, what: str) -> None:
    if vdev.kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, f"VFIO_DEVICE_FEATURE_DMA_BUF: {what} failed (injected)")


def vfio_pci_core_feature_dma_buf(vdev: Any, flags: int, arg: UserArg, argsz: int,
                                  data_offset: int = FEATURE_HDR_SIZE) -> int:
    """VFIO_DEVICE_FEATURE_DMA_BUF. ``arg`` is the ioctl's argument, the feature payload at
    ``data_offset`` (after struct vfio_device_feature); ``argsz`` the payload's size
    (feature.argsz - sizeof(struct vfio_device_feature)), as vfio_ioctl_device_feature passes
    them. Returns the new dma-buf fd (0 for a PROBE)."""
    ops: VfioPciDeviceOps | None = getattr(vdev, "pci_ops", None)
    if ops is None or ops.get_dmabuf_phys is None:
        raise kerr(errno.EOPNOTSUPP, f"VFIO_DEVICE_FEATURE_DMA_BUF: {vdev.name}'s driver "
                   "cannot export (no get_dmabuf_phys)")
    if not vfio_check_feature(flags, argsz, V.VFIO_DEVICE_FEATURE_GET, _FIXED_SIZE):
        return 0
    get = V.vfio_device_feature_dma_buf.from_buffer_copy(arg.read(_FIXED_SIZE, data_offset))
    if not get.nr_ranges or get.flags:
        raise kerr(errno.EINVAL, f"VFIO_DEVICE_FEATURE_DMA_BUF: nr_ranges {get.nr_ranges}, "
                   f"flags {get.flags:#x} (nr_ranges must be > 0, flags 0)")
    index = int(get.region_index)
    if index >= V.VFIO_PCI_ROM_REGION_INDEX:
        raise kerr(errno.ENODEV, f"VFIO_DEVICE_FEATURE_DMA_BUF: region {index} is not a BAR")
    if vdev.kernel.profile.vfio_pci_dma_buf_barmap_check and not _barmap_ok(vdev, index):
        raise kerr(errno.ENODEV, f"VFIO_DEVICE_FEATURE_DMA_BUF: BAR{index} of {vdev.name} "
                   "has no resources claimed (vfio_pci_core_get_iomap)")
    nr = int(get.nr_ranges)
    _fault(vdev, "memdup_array_user")
    raw = arg.read(nr * _RANGE_SIZE, data_offset + _FIXED_SIZE)  # EFAULT past the buffer
    ranges = []
    for i in range(nr):
        r = V.vfio_region_dma_range.from_buffer_copy(raw, i * _RANGE_SIZE)
        ranges.append((int(r.offset), int(r.length)))
    length = validate_dmabuf_input(ranges)
    _fault(vdev, "kzalloc(priv)")
    _fault(vdev, "kcalloc(phys_vec)")
    priv = VfioPciDmaBuf(vdev, nr, length)
    priv.provider, priv.phys_vec = ops.get_dmabuf_phys(vdev, index, ranges)
    if not _try_get_registration(vdev):
        raise kerr(errno.ENODEV, f"VFIO_DEVICE_FEATURE_DMA_BUF: {vdev.name} is being "
                   "unregistered")
    kernel = vdev.kernel
    table = VFIO_PCI_DMABUF_OPS_PIN_REFUSED if kernel.profile.revocable_pin_refused \
        else VFIO_PCI_DMABUF_OPS
    try:
        buf = core.dma_buf_export(kernel, table, length, priv, int(get.open_flags))
    except OSError:
        _put_registration(vdev)
        raise
    priv.dmabuf = buf
    priv.track_init(f"{buf.name}.vfio")
    with vdev.memory_lock.write():
        buf.resv.lock_ctx()
        try:
            priv.set_revoked(not _memory_enabled(vdev), "vfio_pci_core_feature_dma_buf")
            vdev.dmabufs.append(priv)
        finally:
            buf.resv.unlock()
    try:
        fd = core.dma_buf_fd(arg.proc, buf, int(get.open_flags))
    except OSError:
        core.dma_buf_put(buf)  # the release takes it off the list and puts the registration
        raise
    kernel.sched.emit("vfio", "dma_buf_export", dev=vdev.name, buf=buf.name, bar=index,
                      ranges=nr, size=length, revoked=priv._revoked)
    return fd


# ----- revoke / un-revoke ------------------------------------------------------------------
def _file_active(buf: DmaBuf) -> bool:
    """get_file_active without the reference (see the module docstring)."""
    return buf._ref.get() > 0


def _unrevoke(priv: VfioPciDmaBuf, buf: DmaBuf) -> None:
    buf.resv.lock_ctx()
    try:
        priv.set_revoked(False, "vfio_pci_dma_buf_move")
        core.dma_buf_invalidate_mappings(buf)
        if buf.kernel.profile.revoke_waits_for_unmap:
            buf.resv.wait_timeout(DMA_RESV_USAGE_BOOKKEEP)
    finally:
        buf.resv.unlock()


def vfio_pci_dma_buf_move(vdev: Any, revoked: bool) -> None:
    """vfio_pci_dma_buf_move: revoke (or un-revoke) every dma-buf of ``vdev``; the caller
    holds ``vdev.memory_lock`` for write."""
    lockdep_assert_held_write(vdev.memory_lock, "vfio_pci_dma_buf_move")
    n = 0
    for priv in list(vdev.dmabufs):
        buf = priv.dmabuf
        assert buf is not None
        if not _file_active(buf):
            continue
        if priv.revoked == revoked:  # memory_lock (write) orders it against every writer
            continue
        n += 1
        if revoked:
            core.revoke(buf, functools.partial(priv.set_revoked, True,
                                               "vfio_pci_dma_buf_move"))
        else:
            _unrevoke(priv, buf)
    vdev.kernel.sched.emit("vfio", "dma_buf_move", dev=vdev.name, revoked=revoked, bufs=n)


def vfio_pci_dma_buf_cleanup(vdev: Any) -> None:
    """vfio_pci_dma_buf_cleanup (device close): permanent revoke of every live buffer."""
    n = 0
    with vdev.memory_lock.write():
        for priv in list(vdev.dmabufs):
            buf = priv.dmabuf
            assert buf is not None
            if not _file_active(buf):
                continue
            buf.get()

            def mark(p: VfioPciDmaBuf = priv) -> None:
                vdev.dmabufs.remove(p)
                p.vdev = None
                p.set_revoked(True, "vfio_pci_dma_buf_cleanup")

            core.revoke(buf, mark)
            _put_registration(vdev)
            buf.put()
            n += 1
    vdev.kernel.sched.emit("vfio", "dma_buf_cleanup", dev=vdev.name, bufs=n)
