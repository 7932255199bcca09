"""iommufd races (drivers/iommu/iommufd/): a device's DMA through an IOAS against revoke,
unmap, an in-kernel access's pins, and closing the iommufd; each buggy and fixed.

- dma-buf revoke vs DMA: a mock device DMAs through an IOAS area mapped from a revocable
  dma-buf (IOAS_MAP_FILE) while the exporter revokes it and reclaims the memory, and the VMM
  unmaps the area. iommufd's revoke callback unmaps every domain under resv → pages mutex
  before it returns, so no DMA reaches the reclaimed memory. Buggy: ``iommufd.revoke_skips_
  unmap`` (the domain keeps translating: DMA into freed memory).
- resv → pages mutex: IOAS_MAP_FILE of a dma-buf racing its revoke. Buggy: ``iommufd.dmabuf_
  map_lock_inversion`` takes the pages mutex before resv (ABBA).
- access vs unmap: an mdev-style driver pins pages through an iommufd_access and DMAs into
  them while userspace unmaps the IOVA and then the memory. The unmap waits until the
  access's unmap callback has dropped its pins; a driver whose callback stops its DMA first is
  safe; one that only unpins (no quiescing) DMAs into freed memory.
- close vs device: a mock device DMAs while the VMM closes the iommufd and unmaps its buffer.
  Closing destroys leaves first (the device, then its HWPT, then the IOAS). Buggy: ``iommufd.
  detach_after_free`` puts (and frees) the automatic HWPT before moving the device off it.
- PASID nesting (the old sva_bind_gpasid in today's form): a nested HWPT over a nest-parent
  stage 2, attached to a device PASID; its lifetime follows the fd, not the process: closing
  the iommufd detaches and frees it, and a DMA tagged with the PASID afterwards faults and
  never walks freed tables. Buggy: ``iommufd.release_ignores_users`` frees nested HWPTs
  before the devices bound to them are detached.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ..host.sim import SimHost
from ..kapi import (
    IOMMUFD_DETACH_AFTER_FREE,
    IOMMUFD_DMABUF_MAP_LOCK_INVERSION,
    IOMMUFD_RELEASE_IGNORES_USERS,
    IOMMUFD_REVOKE_SKIPS_UNMAP,
    MockDevice,
    Mutex,
    Sandbox,
    access,
    dmabuf_fd,
    ioas_alloc,
    map_ram,
    mock_domain,
    phys_dma_write,
    reclaim_buffer,
    revocable_dmabuf,
    revoke_buffer,
    scenario,
)
from ..uapi import iommufd as I
from ..uapi import linux as L

PROFILES = ("linux-7.1",)
PAGE = L.PAGE_SIZE
IOVA = I.MOCK_APERTURE_START
RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
FIXED = I.IOMMU_IOAS_MAP_FIXED_IOVA


def _sz(cls: type[ctypes.Structure]) -> int:
    return ctypes.sizeof(cls)


def _map_file(host: SimHost, fd: int, ioas: int, dfd: int, iova: int, length: int) -> None:
    host.ioctl(fd, I.IOMMU_IOAS_MAP_FILE, I.iommu_ioas_map_file(
        size=_sz(I.iommu_ioas_map_file), flags=RW | FIXED, ioas_id=ioas, fd=dfd, start=0,
        length=length, iova=iova))


def _unmap(host: SimHost, fd: int, ioas: int, iova: int, length: int) -> None:
    host.ioctl(fd, I.IOMMU_IOAS_UNMAP, I.iommu_ioas_unmap(
        size=_sz(I.iommu_ioas_unmap), ioas_id=ioas, iova=iova, length=length))


def _revoke_vs_dma(s: Sandbox) -> None:
    host = s.host
    fd, ioas = ioas_alloc(host)
    stdev, _, _ = mock_domain(host, fd, ioas)
    buf = revocable_dmabuf(host, 2 * PAGE)
    dfd = dmabuf_fd(host, buf)
    _map_file(host, fd, ioas, dfd, IOVA, 2 * PAGE)
    dev = MockDevice(host, fd, stdev)

    def device() -> None:
        dev.write(IOVA, b"\x11" * 8)
        dev.write(IOVA + PAGE, b"\x22" * 8)

    def exporter() -> None:
        revoke_buffer(buf)  # a reset of the exporting device: its BAR goes away
        reclaim_buffer(buf)

    def vmm() -> None:
        _unmap(host, fd, ioas, IOVA, 2 * PAGE)

    s.spawn("device", device)
    s.spawn("exporter", exporter)
    s.spawn("vmm", vmm)


@scenario(profiles=PROFILES, expect="safe")
def iommufd_dmabuf_revoke_vs_dma(s: Sandbox) -> None:
    """A device DMAs through an IOAS area mapped from a dma-buf while the exporter revokes
    and reclaims it and the VMM unmaps the area: revoke unmaps every domain first."""
    _revoke_vs_dma(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_REVOKE_SKIPS_UNMAP,))
def iommufd_dmabuf_revoke_vs_dma_buggy(s: Sandbox) -> None:
    """The same race with the revoke callback leaving the domains mapped: the device writes
    reclaimed memory."""
    _revoke_vs_dma(s)


def _map_vs_revoke(s: Sandbox) -> None:
    host = s.host
    fd, ioas = ioas_alloc(host)
    mock_domain(host, fd, ioas)
    buf = revocable_dmabuf(host, PAGE)
    dfd = dmabuf_fd(host, buf)

    def vmm() -> None:
        try:
            _map_file(host, fd, ioas, dfd, IOVA, PAGE)
        except OSError:
            return  # revoked first: ENODEV, as designed

    def exporter() -> None:
        revoke_buffer(buf)

    s.spawn("vmm", vmm)
    s.spawn("exporter", exporter)


@scenario(profiles=PROFILES, expect="safe")
def iommufd_dmabuf_map_vs_revoke(s: Sandbox) -> None:
    """IOAS_MAP_FILE of a dma-buf races its revoke: both take resv, then the pages mutex."""
    _map_vs_revoke(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_DMABUF_MAP_LOCK_INVERSION,))
def iommufd_dmabuf_map_vs_revoke_abba(s: Sandbox) -> None:
    """The map takes the pages mutex before resv, revoke the other way round: ABBA."""
    _map_vs_revoke(s)


def _access_vs_unmap(s: Sandbox, quiesce: bool) -> None:
    host = s.host
    fd, ioas = ioas_alloc(host)
    buf = map_ram(host, fd, ioas, IOVA, 2 * PAGE)
    lock = Mutex(host.kernel.sched, "mdev.dma_lock")
    stopped = s.shared(False, "mdev.stopped")
    pins: list[Any] = []

    def unmap_cb(iova: int, length: int) -> None:
        """The driver's unmap callback: stop DMA into the range (when it quiesces), unpin."""
        if quiesce:
            with lock:  # no DMA is in flight once the lock is ours
                stopped.set(True)
        if pins:
            acc.unpin_pages(IOVA, 2 * PAGE)
            pins.clear()

    acc = access(host, fd, ioas, unmap_cb)
    try:
        pins.extend(acc.pin_pages(IOVA, 2 * PAGE, 0))
    except OSError:
        acc.destroy_user()  # the driver's probe failed: it gives its access back
        raise
    target = pins[0][0]

    def driver() -> None:
        for i in range(2):
            with lock:
                if stopped.get():
                    break
                phys_dma_write(host, target + 8 * i, b"\x5a" * 8, "mdev0")

    def vmm() -> None:
        _unmap(host, fd, ioas, IOVA, 2 * PAGE)
        host.munmap(buf, 2 * PAGE)  # the last user of the pages: they are freed

    s.spawn("driver", driver)
    s.spawn("vmm", vmm)
    s.final("teardown", lambda: acc.destroy_user())  # type: ignore[func-returns-value]


@scenario(profiles=PROFILES, expect="safe")
def iommufd_access_vs_unmap(s: Sandbox) -> None:
    """An mdev-style driver DMAs into pages it pinned through an iommufd access while
    userspace unmaps them: its unmap callback stops the DMA, then unpins."""
    _access_vs_unmap(s, quiesce=True)


@scenario(profiles=PROFILES, expect="violation")
def iommufd_access_ignores_unmap(s: Sandbox) -> None:
    """The driver's callback unpins without stopping its DMA: it writes freed memory."""
    _access_vs_unmap(s, quiesce=False)


def _close_vs_device(s: Sandbox) -> None:
    host = s.host
    fd, ioas = ioas_alloc(host)
    buf = map_ram(host, fd, ioas, IOVA, 2 * PAGE)
    stdev, _, _ = mock_domain(host, fd, ioas)
    dev = MockDevice(host, fd, stdev)

    def device() -> None:
        dev.write(IOVA, b"\x33" * 8)
        dev.write(IOVA + PAGE, b"\x44" * 8)

    def vmm() -> None:
        host.close(fd)  # the VMM exits: the iommufd goes first, then the guest's RAM
        host.munmap(buf, 2 * PAGE)

    s.spawn("device", device)
    s.spawn("vmm", vmm)


@scenario(profiles=PROFILES, expect="safe")
def iommufd_close_vs_device_dma(s: Sandbox) -> None:
    """A device DMAs while the VMM closes the iommufd and unmaps its memory: the device is
    detached (blocked) before its HWPT and IOAS go, so nothing it can reach is freed."""
    _close_vs_device(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_DETACH_AFTER_FREE,))
def iommufd_close_vs_device_dma_buggy(s: Sandbox) -> None:
    """Closing detaches the device only after its automatic HWPT is put and freed: the
    device translates through the freed domain in between."""
    _close_vs_device(s)


def _pasid_nested(s: Sandbox) -> None:
    host = s.host
    fd, ioas = ioas_alloc(host)
    stdev, _, idev = mock_domain(host, fd, ioas, I.MOCK_FLAGS_DEVICE_PASID)
    parent = I.iommu_hwpt_alloc(size=_sz(I.iommu_hwpt_alloc), dev_id=idev, pt_id=ioas,
                                flags=I.IOMMU_HWPT_ALLOC_NEST_PARENT | I.IOMMU_HWPT_ALLOC_PASID)
    host.ioctl(fd, I.IOMMU_HWPT_ALLOC, parent)
    # The RID moves to the PASID-capable stage 2, as a VMM does before binding PASIDs.
    replace = I.iommu_test_cmd(size=_sz(I.iommu_test_cmd),
                               op=I.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, id=stdev)
    replace.mock_domain_replace.pt_id = parent.out_hwpt_id
    host.ioctl(fd, I.IOMMU_TEST_CMD, replace)
    data = I.iommu_hwpt_selftest(iotlb=I.IOMMU_TEST_IOTLB_DEFAULT)
    scratch = host.mmap(0, PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED | L.MAP_ANONYMOUS,
                        -1, 0)
    host.poke(scratch, bytes(data))
    nested = I.iommu_hwpt_alloc(size=_sz(I.iommu_hwpt_alloc), dev_id=idev,
                                pt_id=parent.out_hwpt_id, flags=I.IOMMU_HWPT_ALLOC_PASID,
                                data_type=I.IOMMU_HWPT_DATA_SELFTEST, data_len=_sz(
                                    I.iommu_hwpt_selftest), data_uptr=scratch)
    host.ioctl(fd, I.IOMMU_HWPT_ALLOC, nested)
    attach = I.iommu_test_cmd(size=_sz(I.iommu_test_cmd), op=I.IOMMU_TEST_OP_PASID_ATTACH,
                              id=stdev)
    attach.pasid_attach.pasid = PASID
    attach.pasid_attach.pt_id = nested.out_hwpt_id
    host.ioctl(fd, I.IOMMU_TEST_CMD, attach)
    dev = MockDevice(host, fd, stdev)

    def device() -> None:
        dev.read(IOVA, 8, pasid=PASID)  # a guest-programmed DMA tagged with the PASID
        dev.read(IOVA, 8, pasid=PASID)

    def vmm() -> None:
        host.close(fd)  # the fd, not the process, owns the binding

    s.spawn("device", device)
    s.spawn("vmm", vmm)


PASID = 0x7F


@scenario(profiles=PROFILES, expect="safe")
def iommufd_pasid_nested_vs_close(s: Sandbox) -> None:
    """A nested HWPT (guest stage 1 over a nest-parent stage 2) bound to a device PASID,
    the successor of sva_bind_gpasid: closing the iommufd detaches it before freeing it, so
    a PASID-tagged DMA faults and never walks freed tables."""
    _pasid_nested(s)


@scenario(profiles=PROFILES, expect="violation", bugs=(IOMMUFD_RELEASE_IGNORES_USERS,))
def iommufd_pasid_nested_vs_close_buggy(s: Sandbox) -> None:
    """Closing frees the nested HWPT first: a PASID-tagged DMA walks its freed tables."""
    _pasid_nested(s)
