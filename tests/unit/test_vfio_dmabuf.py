"""vfio-pci's dma-buf export (kernel/vfio/pci/dmabuf.py, KERNEL.md §2): the check order case
by case, the exporter's rules by profile (6.19 vs 7.1), the revoke / un-revoke table (through
vfio_pci_dma_buf_move on a stand-in device, then through the core's config writes on the edu),
close as a permanent revoke, and IOAS_MAP_FILE of a vfio-pci buffer: revoke unmaps every IOAS
domain, un-revoke does not remap."""

from __future__ import annotations

import ctypes
import errno
from types import SimpleNamespace
from typing import Any

import pytest

from passthru import SimHost
from passthru.hw.iommu import Iommu, IommuDomain
from passthru.hw.pci import Bar, PciFunction, Topology
from passthru.kernel.dma.p2pdma import pcim_p2pdma_init
from passthru.kernel.dma_buf import core
from passthru.kernel.dma_buf.core import DmaBufAttachOps
from passthru.kernel.dma_buf.mock import mock_dmabuf
from passthru.kernel.fs.uaccess import UserArg
from passthru.kernel.vfio.pci import dmabuf as D
from passthru.sim.locks import RwSem
from passthru.sim.track import TrackedList
from passthru.uapi import iommufd as I
from passthru.uapi import linux as L
from passthru.uapi import vfio as V

PAGE = 4096
GiB = 1 << 30
BAR0 = 3 * GiB + (256 << 20)
BAR0_SIZE = 1 << 20
GET = V.VFIO_DEVICE_FEATURE_GET | V.VFIO_DEVICE_FEATURE_DMA_BUF


def err(e: int, fn: Any, *args: Any, **kw: Any) -> OSError:
    with pytest.raises(OSError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == e, ei.value
    return ei.value


class FakeVdev:
    """The core's VfioPciCoreDevice as far as the dma-buf code reads it."""

    def __init__(self, h: SimHost, func: PciFunction, ops: D.VfioPciDeviceOps | None
                 = D.VFIO_PCI_DEV_OPS) -> None:
        self.kernel = h.kernel
        self.name = func.name
        self.pdev = SimpleNamespace(func=func, mse=True, power_state="D0")  # hw side
        self.pci_ops = ops
        self.memory_lock = RwSem(h.kernel.sched, f"{func.name}.memory_lock")
        self.dmabufs: list[D.VfioPciDmaBuf] = TrackedList(label=f"{func.name}.dmabufs")
        self.registered = True
        self.registrations = 0

    def memory_enabled(self) -> bool:
        return self.pdev.mse and self.pdev.power_state == "D0"

    def try_get_registration(self) -> bool:
        if self.registered:
            self.registrations += 1
        return self.registered

    def put_registration(self) -> None:
        self.registrations -= 1

    # the core's trigger paths, reduced to what they do for the dma-bufs
    def set_mse(self, on: bool) -> None:
        with self.memory_lock.write():
            self.pdev.mse = on
            D.vfio_pci_dma_buf_move(self, not self.memory_enabled())

    def set_power(self, state: str) -> None:
        with self.memory_lock.write():
            if state != "D0":
                D.vfio_pci_dma_buf_move(self, True)
            self.pdev.power_state = state
            if self.memory_enabled():
                D.vfio_pci_dma_buf_move(self, False)

    def reset(self) -> None:
        """VFIO_DEVICE_RESET / FLR: revoke, reset (config restored), un-revoke if enabled."""
        with self.memory_lock.write():
            D.vfio_pci_dma_buf_move(self, True)
            if self.memory_enabled():
                D.vfio_pci_dma_buf_move(self, False)

    def close(self) -> None:
        D.vfio_pci_dma_buf_cleanup(self)


class Ctx:
    def __init__(self, profile: str = "linux-7.1", p2p: bool = True, **kw: Any) -> None:
        self.h = SimHost(profile=profile)
        self.topo = Topology(host_p2p=True)
        rp = self.topo.add_root_port("rp0")
        self.func = self.topo.add_function(
            PciFunction("gpu0", "0000:01:00.0", {0: Bar(BAR0, BAR0_SIZE, p2p=p2p),
                                                 2: Bar(BAR0 + BAR0_SIZE, 16 * PAGE)}), rp)
        self.nic = self.topo.add_function(PciFunction("nic0", "0000:02:00.0"),
                                          self.topo.add_root_port("rp1"))
        pcim_p2pdma_init(self.func, self.topo)
        self.vdev = FakeVdev(self.h, self.func, **kw)

    def export(self, ranges: list[tuple[int, int]], region: int = 0, *, flags: int = 0,
               feature_flags: int = GET, argsz_delta: int = 0,
               open_flags: int = L.O_RDWR | L.O_CLOEXEC) -> int:
        raw = V.feature_dma_buf(region, ranges, open_flags, flags=flags,
                                feature_flags=feature_flags)
        argsz = len(raw) - D.FEATURE_HDR_SIZE + argsz_delta
        return D.vfio_pci_core_feature_dma_buf(self.vdev, feature_flags,
                                               UserArg(self.h.proc, raw), argsz)

    def buf(self, fd: int) -> Any:
        return self.h.proc.fds[fd]

    def revoked(self, fd: int) -> bool:
        return bool(self.buf(fd).priv._revoked)


def importer(invalidate: bool = True, p2p: bool = True) -> DmaBufAttachOps:
    def inv(a: core.DmaBufAttachment) -> None:
        if a.mapping is not None:
            core.dma_buf_unmap_attachment(a)

    return DmaBufAttachOps(invalidate=inv if invalidate else None, allow_peer2peer=p2p,
                           name="test-importer")


# ----- the check order, case by case ------------------------------------------------------
def test_success_size_is_the_sum_of_ranges_and_fd_is_a_dmabuf() -> None:
    c = Ctx()
    fd = c.export([(0, PAGE), (4 * PAGE, 2 * PAGE)])
    buf = c.buf(fd)
    assert buf.size() == 3 * PAGE and buf.exp_name == "vfio-pci"
    priv: D.VfioPciDmaBuf = buf.priv
    assert [tuple(v) for v in priv.phys_vec] == [(BAR0, PAGE), (BAR0 + 4 * PAGE, 2 * PAGE)]
    assert c.vdev.dmabufs == [priv] and c.vdev.registrations == 1
    assert not c.revoked(fd)
    c.h.close(fd)
    assert c.vdev.dmabufs == [] and c.vdev.registrations == 0


@pytest.mark.parametrize("ops", [D.VfioPciDeviceOps(), None])
def test_1_driver_that_cannot_export_is_eopnotsupp_before_anything(ops: Any) -> None:
    c = Ctx(ops=ops)
    err(errno.EOPNOTSUPP, c.export, [(0, PAGE)], feature_flags=V.VFIO_DEVICE_FEATURE_PROBE
        | GET)
    err(errno.EOPNOTSUPP, c.export, [], 7, flags=1)


def test_2_probe_set_and_argsz() -> None:
    c = Ctx()
    probe = V.VFIO_DEVICE_FEATURE_PROBE | GET
    assert c.export([], 9, flags=5, feature_flags=probe) == 0  # PROBE checks nothing else
    err(errno.EINVAL, c.export, [(0, PAGE)], feature_flags=V.VFIO_DEVICE_FEATURE_PROBE
        | V.VFIO_DEVICE_FEATURE_SET | V.VFIO_DEVICE_FEATURE_DMA_BUF)
    err(errno.EINVAL, c.export, [(0, PAGE)],
        feature_flags=V.VFIO_DEVICE_FEATURE_SET | V.VFIO_DEVICE_FEATURE_DMA_BUF)
    err(errno.EINVAL, c.export, [(0, PAGE)], feature_flags=V.VFIO_DEVICE_FEATURE_DMA_BUF)
    err(errno.EINVAL, c.export, [(0, PAGE)], argsz_delta=-17)  # below the fixed 16 bytes
    assert c.vdev.dmabufs == []


def test_3_nr_ranges_zero_or_flags() -> None:
    c = Ctx()
    err(errno.EINVAL, c.export, [])
    err(errno.EINVAL, c.export, [(0, PAGE)], flags=1)
    err(errno.EINVAL, c.export, [], 6)  # 3 before 4


@pytest.mark.parametrize("region", [6, 7, 8, 1000])
def test_4_region_not_a_bar_is_enodev(region: int) -> None:
    c = Ctx()
    err(errno.ENODEV, c.export, [(0, PAGE)], region)
    err(errno.ENODEV, c.export, [(0, 0)], region)  # 4 before 5


def test_5_zero_unaligned_and_total_overflow() -> None:
    c = Ctx()
    err(errno.EINVAL, c.export, [(0, 0)])
    err(errno.EINVAL, c.export, [(0, PAGE), (PAGE, 0)])
    err(errno.EINVAL, c.export, [(1, PAGE)])
    err(errno.EINVAL, c.export, [(0, PAGE + 1)])
    big = (1 << 64) - PAGE
    err(errno.EINVAL, c.export, [(0, big), (0, big)])  # the size_t sum wraps
    err(errno.EINVAL, c.export, [(0, 1 << 63)])  # DMA_IOVA_USE_SWIOTLB
    # 5 before 6: an unaligned range fails EINVAL even where a later range would overflow
    err(errno.EINVAL, c.export, [(1, PAGE), ((1 << 64) - PAGE, 2 * PAGE)])


def test_6_past_the_bar_and_offset_overflow() -> None:
    c = Ctx()
    err(errno.EINVAL, c.export, [(BAR0_SIZE - PAGE, 2 * PAGE)])
    err(errno.EINVAL, c.export, [(BAR0_SIZE, PAGE)])
    err(errno.EOVERFLOW, c.export, [((1 << 64) - PAGE, PAGE)])
    err(errno.EOVERFLOW, c.export, [(0, PAGE), ((1 << 64) - 2 * PAGE, 2 * PAGE)])
    assert c.export([(BAR0_SIZE - PAGE, PAGE)]) >= 0  # the last page of the BAR is fine
    assert c.vdev.registrations == 1


def test_7_bar_without_p2p_provider() -> None:
    c = Ctx(p2p=False)
    err(errno.EINVAL, c.export, [(0, PAGE)])
    # an unimplemented BAR has none either, but from 7.1 the barmap check (4) stops it first
    err(errno.EINVAL, Ctx("linux-6.19", p2p=False).export, [(0, PAGE)], 1)
    err(errno.ENODEV, c.export, [(0, PAGE)], 1)
    err(errno.ENODEV, c.export, [(0, 0)], 1)  # 4 before 5
    # the kernel checks the provider before the ranges: an overflowing range on a BAR
    # without a provider is EINVAL, not EOVERFLOW (KERNEL.md §2 lists them the other way)
    err(errno.EINVAL, c.export, [((1 << 64) - PAGE, PAGE)])
    assert c.export([(0, PAGE)], 2) >= 0  # BAR2 can


def test_8_registration_gone_is_enodev_and_leaves_nothing() -> None:
    c = Ctx()
    c.vdev.registered = False
    err(errno.ENODEV, c.export, [(0, PAGE)])
    assert c.vdev.dmabufs == [] and "dma-buf" not in c.h.kernel.live


def test_short_user_buffer_is_efault() -> None:
    c = Ctx()
    raw = V.feature_dma_buf(0, [(0, PAGE)], 0)
    raw = raw[:-8]  # nr_ranges says 1, the buffer holds half a range
    err(errno.EFAULT, D.vfio_pci_core_feature_dma_buf, c.vdev, GET, UserArg(c.h.proc, raw),
        len(raw) - D.FEATURE_HDR_SIZE)


def test_initial_state_revoked_when_memory_disabled() -> None:
    c = Ctx()
    c.vdev.pdev.mse = False
    fd = c.export([(0, PAGE)])
    assert c.revoked(fd)
    err(errno.ENODEV, core.dma_buf_dynamic_attach, c.buf(fd), "0000:02:00.0", importer())
    c.vdev.set_mse(True)
    assert not c.revoked(fd)


# ----- exporter ops, 6.19 vs 7.1 -------------------------------------------------------------
@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_attach_rules_by_profile(profile: str) -> None:
    c = Ctx(profile)
    buf = c.buf(c.export([(0, 2 * PAGE)]))
    err(errno.EOPNOTSUPP, core.dma_buf_attach, buf, "0000:02:00.0")  # static: no peer2peer
    err(errno.EOPNOTSUPP, core.dma_buf_dynamic_attach, buf, "0000:02:00.0",
        importer(p2p=False))
    if profile == "linux-7.1":
        # an importer with ops but no invalidate_mappings cannot be revoked: refused
        err(errno.EOPNOTSUPP, core.dma_buf_dynamic_attach, buf, "0000:02:00.0",
            importer(invalidate=False))
        assert buf.ops.pin is None
    else:
        err(errno.EINVAL, core.dma_buf_dynamic_attach, buf, "0000:02:00.0",
            importer(invalidate=False))  # < 7.1 the core insists on move_notify
        assert buf.ops.pin is not None
    a = core.dma_buf_dynamic_attach(buf, "0000:02:00.0", importer())
    buf.resv.lock_ctx()
    try:
        if profile == "linux-6.19":
            err(errno.EOPNOTSUPP, core.dma_buf_pin, a)  # 6.19-rc6's pin op
        else:
            core.dma_buf_pin(a)  # 7.1: no pin op, a revocable importer may pin
            core.dma_buf_unpin(a)
        m = core.dma_buf_map_attachment(a)
        assert [(r.phys, r.length) for r in m.ranges] == [(BAR0, 2 * PAGE)]
        core.dma_buf_unmap_attachment(a)
    finally:
        buf.resv.unlock()
    core.dma_buf_detach(buf, a)
    assert buf.ops.mmap is None and buf.ops.vmap is None
    err(errno.EINVAL, buf.mmap, c.h.proc, None)


def test_map_while_revoked_is_enodev_and_unrevoke_allows_a_new_map() -> None:
    c = Ctx()
    buf = c.buf(c.export([(0, PAGE)]))
    a = core.dma_buf_dynamic_attach(buf, "0000:02:00.0", importer())
    c.vdev.set_mse(False)
    err(errno.ENODEV, core.dma_buf_map_attachment_unlocked, a)
    c.vdev.set_mse(True)
    core.dma_buf_map_attachment_unlocked(a)
    core.dma_buf_unmap_attachment_unlocked(a)
    core.dma_buf_detach(buf, a)


# ----- the revoke / un-revoke table ----------------------------------------------------------
@pytest.mark.parametrize("event", ["mse", "d3hot", "reset"])
def test_revoke_table(event: str) -> None:
    c = Ctx()
    fd = c.export([(0, PAGE)])
    buf = c.buf(fd)
    a = core.dma_buf_dynamic_attach(buf, "0000:02:00.0", importer())
    core.dma_buf_map_attachment_unlocked(a)
    seen: list[bool] = []
    if event == "mse":
        c.vdev.set_mse(False)
        seen.append(c.revoked(fd))
        assert a.peek_mapping() is None  # the importer unmapped in its invalidate
        c.vdev.set_mse(True)
    elif event == "d3hot":
        c.vdev.set_power("D3hot")
        seen.append(c.revoked(fd))
        c.vdev.set_power("D0")
    else:
        c.vdev.reset()
        seen.append(c.revoked(fd))  # revoked and un-revoked within the reset
    assert seen == [event != "reset"]
    assert not c.revoked(fd)
    assert a.peek_mapping() is None  # un-revoke never remaps
    core.dma_buf_map_attachment_unlocked(a)
    core.dma_buf_unmap_attachment_unlocked(a)
    core.dma_buf_detach(buf, a)
    assert c.h.kernel.sched.violations == []


def test_reset_with_memory_disabled_stays_revoked_and_d3_with_mse_clear() -> None:
    c = Ctx()
    fd = c.export([(0, PAGE)])
    c.vdev.set_mse(False)
    c.vdev.reset()
    assert c.revoked(fd)
    c.vdev.set_power("D3hot")
    c.vdev.set_power("D0")
    assert c.revoked(fd)  # back in D0, MSE still clear
    c.vdev.set_mse(True)
    assert not c.revoked(fd)


def test_move_asserts_memory_lock_held_for_write() -> None:
    c = Ctx()
    c.export([(0, PAGE)])
    D.vfio_pci_dma_buf_move(c.vdev, True)
    assert [v.kind for v in c.h.kernel.sched.violations] == ["lockdep"]
    c2 = Ctx()
    c2.export([(0, PAGE)])
    with c2.vdev.memory_lock.read():  # for read is not enough
        D.vfio_pci_dma_buf_move(c2.vdev, True)
    assert [v.kind for v in c2.h.kernel.sched.violations] == ["lockdep"]


def test_hot_reset_revokes_every_device_of_the_set() -> None:
    c = Ctx()
    other = FakeVdev(c.h, c.nic)
    fd = c.export([(0, PAGE)])
    devs = [c.vdev, other]
    for d in devs:  # vfio_pci_dev_set_hot_reset: every memory_lock, revoke all, reset
        d.memory_lock.down_write()
        D.vfio_pci_dma_buf_move(d, True)
    assert c.revoked(fd)
    for d in reversed(devs):
        D.vfio_pci_dma_buf_move(d, not d.memory_enabled())
        d.memory_lock.up_write()
    assert not c.revoked(fd)


def test_close_is_a_permanent_revoke_the_fd_lives_on_dead() -> None:
    c = Ctx()
    fd = c.export([(0, PAGE)])
    buf = c.buf(fd)
    a = core.dma_buf_dynamic_attach(buf, "0000:02:00.0", importer())
    core.dma_buf_map_attachment_unlocked(a)
    c.vdev.close()
    priv: D.VfioPciDmaBuf = buf.priv
    assert c.revoked(fd) and priv._vdev is None and c.vdev.dmabufs == []
    assert c.vdev.registrations == 0
    assert a.peek_mapping() is None
    err(errno.ENODEV, core.dma_buf_map_attachment_unlocked, a)
    err(errno.ENODEV, core.dma_buf_dynamic_attach, buf, "0000:02:00.0", importer())
    c.vdev.set_mse(True)  # nothing un-revokes it any more
    assert c.revoked(fd)
    core.dma_buf_detach(buf, a)
    c.h.close(fd)  # the release finds no device
    assert "dma-buf" not in c.h.kernel.live


@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_broken_importer_times_out_only_in_7_1(profile: str) -> None:
    c = Ctx(profile)
    fd = c.export([(0, PAGE)])
    buf = c.buf(fd)
    lazy = DmaBufAttachOps(invalidate=lambda a: None, allow_peer2peer=True, name="lazy")
    a = core.dma_buf_dynamic_attach(buf, "0000:02:00.0", lazy)
    core.dma_buf_map_attachment_unlocked(a)
    sched = c.h.kernel.sched
    sched.spawn("guest-clears-mse", c.vdev.set_mse, False)
    sched.run()
    kinds = [v.kind for v in sched.violations]
    assert kinds == (["revoke-timeout"] if profile == "linux-7.1" else [])
    assert sched.now == (1_000_000_000 if profile == "linux-7.1" else 0)
    assert c.revoked(fd)
    core.dma_buf_unmap_attachment_unlocked(a)
    core.dma_buf_detach(buf, a)


# ----- iommufd: IOAS_MAP_FILE of the vfio dma-buf -------------------------------------------
class Iommufd:
    def __init__(self, c: Ctx) -> None:
        self.c = c
        h = c.h
        self.fd = h.open("/dev/iommu", L.O_RDWR)
        a = I.iommu_ioas_alloc(size=ctypes.sizeof(I.iommu_ioas_alloc))
        h.ioctl(self.fd, I.IOMMU_IOAS_ALLOC, a)
        self.ioas_id = a.out_ioas_id
        self.unit = Iommu(h.kernel.sched, h.kernel.phys, "vt-d0")
        self.domains: list[IommuDomain] = []

    @property
    def iopt(self) -> Any:
        ictx: Any = self.c.h.proc.fds[self.fd]
        return ictx.objects[self.ioas_id].iopt

    def add_domain(self) -> str:
        dom = self.unit.domain()
        self.iopt.table_add_domain(dom)
        self.domains.append(dom)
        dev = f"peer{len(self.domains)}"
        self.unit.attach(dev, dom)
        return dev

    def map_file(self, dfd: int, start: int, length: int, iova: int | None = None) -> int:
        flags = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE
        if iova is not None:
            flags |= I.IOMMU_IOAS_MAP_FIXED_IOVA
        cmd = I.iommu_ioas_map_file(size=ctypes.sizeof(I.iommu_ioas_map_file), flags=flags,
                                    ioas_id=self.ioas_id, fd=dfd, start=start, length=length,
                                    iova=iova or 0)
        self.c.h.ioctl(self.fd, I.IOMMU_IOAS_MAP_FILE, cmd)
        return int(cmd.iova)

    def unmap(self, iova: int, length: int) -> int:
        cmd = I.iommu_ioas_unmap(size=ctypes.sizeof(I.iommu_ioas_unmap), ioas_id=self.ioas_id,
                                 iova=iova, length=length)
        self.c.h.ioctl(self.fd, I.IOMMU_IOAS_UNMAP, cmd)
        return int(cmd.length)

    def translates(self, dev: str, iova: int) -> bool:
        return self.unit.dma(dev, iova, 4, False) is not None

    def finish(self) -> None:
        for dom in self.domains:
            self.iopt.table_remove_domain(dom)


@pytest.mark.parametrize("profile", ["linux-6.19", "linux-7.1"])
def test_iommufd_maps_a_vfio_buffer_and_revoke_unmaps_every_domain(profile: str) -> None:
    c = Ctx(profile)
    fd = c.export([(8 * PAGE, 4 * PAGE)])
    io = Iommufd(c)
    d1, d2 = io.add_domain(), io.add_domain()
    iova = io.map_file(fd, 0, 4 * PAGE)
    assert io.translates(d1, iova) and io.translates(d2, iova)
    assert io.domains[0].iova_to_phys(iova) == BAR0 + 8 * PAGE
    c.vdev.set_mse(False)  # revoke: every IOAS domain loses the area
    assert not io.translates(d1, iova) and not io.translates(d2, iova)
    err(errno.ENODEV, io.map_file, fd, 0, 4 * PAGE)  # revoked at map time
    c.vdev.set_mse(True)
    assert not io.translates(d1, iova)  # no automatic remap on un-revoke
    assert io.unmap(iova, 4 * PAGE) == 4 * PAGE
    assert io.map_file(fd, 0, 4 * PAGE, iova) == iova  # userspace maps again
    assert io.translates(d1, iova) and io.translates(d2, iova)
    c.vdev.reset()  # FLR / RESET: revoke then un-revoke: the area is gone again
    assert not io.translates(d1, iova)
    assert io.unmap(iova, 4 * PAGE) == 4 * PAGE
    io.finish()
    assert c.h.kernel.sched.violations == []


def test_iommufd_refuses_multi_range_and_close_revokes() -> None:
    c = Ctx()
    two = c.export([(0, PAGE), (2 * PAGE, PAGE)])
    io = Iommufd(c)
    d = io.add_domain()
    err(errno.EOPNOTSUPP, io.map_file, two, 0, 2 * PAGE)
    a = core.dma_buf_dynamic_attach(mock_dmabuf(c.h.kernel, PAGE), "iommufd", importer())
    a.dmabuf.resv.lock_ctx()
    err(errno.EOPNOTSUPP, D.vfio_pci_dma_buf_iommufd_map, a)  # not a vfio-pci buffer
    a.dmabuf.resv.unlock()
    core.dma_buf_detach(a.dmabuf, a)
    a.dmabuf.put()
    one = c.export([(0, 2 * PAGE)])
    iova = io.map_file(one, 0, 2 * PAGE)
    assert io.translates(d, iova)
    c.vdev.close()
    assert not io.translates(d, iova)
    err(errno.ENODEV, io.map_file, one, 0, 2 * PAGE)
    assert io.unmap(iova, 2 * PAGE) == 2 * PAGE
    io.finish()


def test_fail_nth_export_leaves_nothing() -> None:
    """Fail each fault point of the export in turn: ENOMEM, nothing left behind."""
    for n in range(1, 10):
        c = Ctx()
        s = c.h.kernel.sched
        before = dict(c.h.kernel.live)
        s.fail_nth = frozenset({s.faults_seen + n})
        try:
            fd = c.export([(0, PAGE)])
        except OSError as e:
            s.fail_nth = frozenset()
            assert e.errno == errno.ENOMEM and s.faults_failed, e
            assert dict(c.h.kernel.live) == before and c.vdev.dmabufs == []
            assert c.vdev.registrations == 0
            continue
        s.fail_nth = frozenset()
        assert not s.faults_failed
        c.h.close(fd)
        assert n == 5  # memdup, priv, phys_vec, dma_buf_export, then success
        return
    raise AssertionError("the export never succeeded")


# ----- through the core: the edu device bound to vfio-pci (cdev), config writes ----------------
CFG = V.vfio_pci_index_to_offset(V.VFIO_PCI_CONFIG_REGION_INDEX)
PCI_COMMAND, MEMORY = 0x04, 0x2


class Edu:
    """/dev/vfio/devices/vfio0 bound to an iommufd; the exports go through the ioctl."""

    def __init__(self, profile: str = "linux-7.1") -> None:
        import passthru.kernel.vfio.pci.vfio_pci as vp  # its initcall: until "vfio" is BUILTIN

        self.h = SimHost(profile=profile)
        self.vdev = vp.vfio_pci_devices(self.h.kernel)["edu0"]
        pdev = self.vdev.pdev
        if pdev.func.p2pdma is None:  # vfio_pci_core_init_dev's pcim_p2pdma_init
            assert pdev.fabric is not None
            pcim_p2pdma_init(pdev.func, pdev.fabric.topology)
        self.iommufd = self.h.open("/dev/iommu", L.O_RDWR)
        self.fd = self.h.open("/dev/vfio/devices/vfio0", L.O_RDWR)
        b = V.vfio_device_bind_iommufd(argsz=ctypes.sizeof(V.vfio_device_bind_iommufd),
                                       iommufd=self.iommufd)
        self.h.ioctl(self.fd, V.VFIO_DEVICE_BIND_IOMMUFD, b)

    def export(self, ranges: list[tuple[int, int]], region: int = 0) -> int:
        return self.h.ioctl(self.fd, V.VFIO_DEVICE_FEATURE,
                            V.feature_dma_buf(region, ranges, L.O_RDWR | L.O_CLOEXEC))

    def cfg_read(self, off: int, n: int) -> int:
        return int.from_bytes(self.h.pread(self.fd, n, CFG + off), "little")

    def cfg_write(self, off: int, n: int, val: int) -> None:
        assert self.h.pwrite(self.fd, val.to_bytes(n, "little"), CFG + off) == n

    def revoked(self, fd: int) -> bool:
        buf: Any = self.h.proc.fds[fd]
        return bool(buf.priv._revoked)


def test_core_export_through_the_ioctl_and_its_errnos() -> None:
    e = Edu()
    fd = e.export([(0, PAGE), (2 * PAGE, PAGE)])
    buf = e.h.proc.fds[fd]
    assert isinstance(buf, core.DmaBuf) and buf.size() == 2 * PAGE
    assert e.h.kernel.live.get("dma-buf") == 1
    probe = V.feature_dma_buf(0, [(0, PAGE)], 0, feature_flags=V.VFIO_DEVICE_FEATURE_PROBE
                              | GET)
    assert e.h.ioctl(e.fd, V.VFIO_DEVICE_FEATURE, probe) == 0
    err(errno.ENODEV, e.export, [(0, PAGE)], V.VFIO_PCI_CONFIG_REGION_INDEX)
    err(errno.EINVAL, e.export, [(0, 2 << 20)])  # the edu's BAR0 is 1 MiB
    err(errno.ENODEV, e.export, [(0, PAGE)], 1)  # no BAR1: no barmap (7.1)
    e.h.exit()
    assert e.h.leaks() == [] and e.h.kernel.sched.violations == []


def test_core_mse_config_writes_revoke_and_unrevoke() -> None:
    """(QEMU's edu has no PM capability: D3hot is covered by the stand-in above.)"""
    e = Edu()
    fd = e.export([(0, PAGE)])
    cmd = e.cfg_read(PCI_COMMAND, 2)
    assert cmd & MEMORY and not e.revoked(fd)
    e.cfg_write(PCI_COMMAND, 2, cmd & ~MEMORY)
    assert e.revoked(fd)
    e.cfg_write(PCI_COMMAND, 2, cmd)
    assert not e.revoked(fd)
    e.cfg_write(PCI_COMMAND, 2, cmd & ~MEMORY)
    e.h.close(fd)  # closed while revoked: the release takes it off the device's list
    assert e.vdev.dmabufs == [] and e.vdev.registration.get() == 2  # the cdev's and the probe's
    e.h.exit()
    assert e.h.leaks() == [] and e.h.kernel.sched.violations == []


def test_core_close_is_a_permanent_revoke_and_an_export_with_mse_clear_starts_revoked() -> None:
    e = Edu()
    cmd = e.cfg_read(PCI_COMMAND, 2)
    e.cfg_write(PCI_COMMAND, 2, cmd & ~MEMORY)
    fd = e.export([(0, PAGE)])
    assert e.revoked(fd)
    e.cfg_write(PCI_COMMAND, 2, cmd)
    assert not e.revoked(fd)
    e.h.close(e.fd)  # the device closes: the buffer is dead, its fd lives on
    assert e.revoked(fd) and e.vdev.dmabufs == []
    assert e.vdev.registration.get() == 1  # the buffer's registration was dropped
    err(errno.ENODEV, core.dma_buf_dynamic_attach, e.h.proc.fds[fd], "0000:02:00.0",
        importer())
    e.h.exit()
    assert e.h.leaks() == [] and e.h.kernel.sched.violations == []
