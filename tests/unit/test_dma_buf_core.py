"""dma-buf core (drivers/dma-buf/dma-buf.c): export rules, attach/map/pin, the locking
convention, invalidation, the revoke contract by profile, moves, fd lifetime."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from passthru import SimHost
from passthru.kernel.dma_buf import core
from passthru.kernel.dma_buf.core import DmaBufAttachOps, DmaBufOps, DmaMapping
from passthru.kernel.dma_buf.importers import DeviceImporter, RdmaMrImporter
from passthru.kernel.dma_buf.mock import mock_dmabuf
from passthru.kernel.dma_buf.movable import movable_dmabuf
from passthru.sim import SimDeadlock
from passthru.uapi import dma_buf as U
from passthru.uapi import linux as L

PAGE = 4096


MINIMAL = DmaBufOps(map_dma_buf=lambda a, d: DmaMapping([]),
                    unmap_dma_buf=lambda a, m, d: None, release=lambda buf: None)


def kinds(h):
    return [v.kind for v in h.sched.violations]


@pytest.mark.parametrize("missing", ["map_dma_buf", "unmap_dma_buf", "release"])
def test_export_needs_mandatory_ops(missing):
    h = SimHost()
    ops = replace(MINIMAL, **{missing: None})
    with pytest.raises(OSError) as e:
        core.dma_buf_export(h.kernel, ops, PAGE, priv=1)
    assert e.value.errno == errno.EINVAL and missing in str(e.value)
    assert h.leaks() == []


def test_export_pin_and_unpin_together():
    h = SimHost()
    ops = replace(MINIMAL, pin=lambda a: None)
    with pytest.raises(OSError) as e:
        core.dma_buf_export(h.kernel, ops, PAGE, priv=1)
    assert e.value.errno == errno.EINVAL
    ops = replace(ops, unpin=lambda a: None)
    buf = core.dma_buf_export(h.kernel, ops, PAGE, priv=1)
    assert buf.dynamic
    buf.put()
    assert h.leaks() == []


def test_attach_null_and_move_notify_rule_by_profile():
    for prof, err in (("linux-6.19", errno.EINVAL), ("linux-7.1", None)):
        h = SimHost(profile=prof)
        buf = core.dma_buf_export(h.kernel, MINIMAL, PAGE, priv=1)
        with pytest.raises(OSError):
            core.dma_buf_attach(buf, None)
        ops = DmaBufAttachOps(invalidate=None)
        if err:
            with pytest.raises(OSError) as e:
                core.dma_buf_dynamic_attach(buf, "dev", ops)
            assert e.value.errno == err
        else:
            a = core.dma_buf_dynamic_attach(buf, "dev", ops)
            core.dma_buf_detach(buf, a)
        buf.put()
        assert h.leaks() == [] and h.sched.violations == []


def test_locking_convention_is_enforced_like_lockdep():
    h = SimHost()
    buf = core.dma_buf_export(h.kernel, MINIMAL, PAGE, priv=1)
    a = core.dma_buf_attach(buf, "dev")
    core.dma_buf_map_attachment(a)  # without the resv lock
    assert "dma_buf_map_attachment without" in h.sched.violations[0].message
    buf.resv.lock_ctx()
    core.dma_buf_unmap_attachment(a)
    core.dma_buf_begin_cpu_access(buf, 1)  # must not hold
    with pytest.raises(SimDeadlock):  # detach takes the lock itself: a real self-deadlock
        core.dma_buf_detach(buf, a)
    buf.resv.unlock()
    assert kinds(h) == ["dma-buf-locking", "dma-buf-locking", "dma-buf-locking", "deadlock"]
    assert "dma_buf_begin_cpu_access called with" in h.sched.violations[1].message


def test_static_importer_pins_on_map_and_unpins_on_unmap():
    h = SimHost()
    buf = movable_dmabuf(h.kernel, 4 * PAGE)
    imp = DeviceImporter("nic", dynamic=False)
    a = imp.attach(buf)
    imp.map()
    assert a.pinned_on_map and buf.priv.pin_count == 1
    with pytest.raises(OSError) as e:  # pinned memory never moves
        buf.priv.migrate(buf, "system")
    assert e.value.errno == errno.EBUSY
    imp.teardown()
    assert buf.priv.pin_count == 0
    buf.priv.migrate(buf, "system")
    buf.put()
    assert h.leaks() == [] and h.sched.violations == []


def movable_attached(h, dev):
    """A two-page movable buffer and a dynamic importer attached to it."""
    buf = movable_dmabuf(h.kernel, 2 * PAGE)
    imp = DeviceImporter(dev)
    imp.attach(buf)
    return buf, imp


def test_move_invalidates_dynamic_importer_and_data_follows():
    h = SimHost()
    buf, imp = movable_attached(h, "gpu2")
    imp.dma_write(0x10, b"payload")
    old = imp.attach_.mapping
    assert old is not None
    buf.priv.migrate(buf, "system")
    assert imp.invalidations == 1 and imp.attach_.mapping is None
    imp.map()
    assert imp.dma_read(0x10, 7) == b"payload"
    assert imp.attach_.mapping.ranges != old.ranges
    imp.teardown()
    buf.put()
    assert h.leaks() == [] and h.sched.violations == []


@pytest.mark.parametrize("profile,attach_err,map_err", [
    ("linux-6.19", None, errno.EOPNOTSUPP),  # vfio's pin op refuses pinned importers
    ("linux-7.1", errno.EOPNOTSUPP, None),   # dma_buf_attach_revocable at attach
])
def test_static_importer_of_revocable_exporter(profile, attach_err, map_err):
    h = SimHost(profile=profile)
    buf = mock_dmabuf(h.kernel, PAGE, require_p2p=False)
    imp = DeviceImporter("static", dynamic=False)
    if attach_err:
        with pytest.raises(OSError) as e:
            imp.attach(buf)
        assert e.value.errno == attach_err
    else:
        imp.attach(buf)
        with pytest.raises(OSError) as e:
            imp.map()
        assert e.value.errno == map_err
        assert imp.attach_.pins == 0  # nothing half-pinned
        imp.teardown()
    buf.put()
    assert h.leaks() == []


def test_rdma_pinned_refuses_revocable():
    h = SimHost()
    buf = mock_dmabuf(h.kernel, PAGE)
    with pytest.raises(OSError) as e:
        RdmaMrImporter(mode="pinned").register(buf)
    assert e.value.errno == errno.EOPNOTSUPP and "does not accept revocable" in str(e.value)
    buf.put()
    assert h.leaks() == []


def test_revoke_then_map_is_enodev_and_unrevoke_allows_remap():
    h = SimHost()
    buf = mock_dmabuf(h.kernel, PAGE)
    imp = DeviceImporter("iommufd")
    imp.attach(buf)
    imp.map()
    buf.priv.revoke(buf)
    assert imp.attach_.mapping is None  # invalidated and unmapped in the callback
    with pytest.raises(OSError) as e:
        imp.map()
    assert e.value.errno == errno.ENODEV
    buf.priv.unrevoke(buf)
    imp.map()
    assert imp.attach_.mapping is not None
    imp.teardown()
    buf.put()
    assert h.leaks() == [] and h.sched.violations == []


def never_unmapping(profile, dev):
    """A revocable buffer mapped by an importer that never unmaps on its own."""
    h = SimHost(profile=profile)
    buf = mock_dmabuf(h.kernel, PAGE)
    imp = DeviceImporter(dev, unmap="never")
    imp.attach(buf)
    imp.map()
    return h, buf, imp


def let_go(imp, buf):
    """The importer finally unmaps and detaches; the buffer goes."""
    imp.unmap_if_invalidated()
    imp.teardown()
    buf.put()


def test_write_between_invalidate_and_unmap_violates_the_contract():
    h, buf, imp = never_unmapping("linux-6.19", "lazy")  # 6.19: revoke does not wait
    buf.priv.revoke(buf)
    imp.dma_read(0, 4)  # speculative read: allowed
    assert h.sched.violations == []
    imp.attach_.dma_access(0, 4, True, b"oops")
    assert kinds(h) == ["revoke-contract"]
    let_go(imp, buf)


def test_revoke_waits_one_second_then_warns_about_broken_importer():
    h, buf, imp = never_unmapping("linux-7.1", "never-unmaps")
    h.sched.spawn("revoke", buf.priv.revoke, buf)
    h.sched.run()
    assert kinds(h) == ["revoke-timeout"] and h.sched.now == 1_000_000_000
    let_go(imp, buf)


def test_access_after_reclaim_is_physical_violation():
    h, buf, imp = never_unmapping("linux-6.19", "lazy")
    buf.priv.revoke(buf)
    buf.priv.reclaim()
    imp.dma_read(0, 4)
    assert kinds(h) == ["physical"]


def test_dma_buf_fd_ioctls_and_lifetime():
    h = SimHost()
    buf = mock_dmabuf(h.kernel, PAGE)
    fd = core.dma_buf_fd(h.proc, buf, L.O_CLOEXEC)
    assert h.ioctl(fd, U.DMA_BUF_IOCTL_SYNC, U.dma_buf_sync(flags=U.DMA_BUF_SYNC_START
                                                           | U.DMA_BUF_SYNC_RW)) == 0
    for bad in (0, U.DMA_BUF_SYNC_END, 1 << 3):
        with pytest.raises(OSError) as e:
            h.ioctl(fd, U.DMA_BUF_IOCTL_SYNC, U.dma_buf_sync(flags=bad))
        assert e.value.errno == errno.EINVAL
    name = bytearray(b"scanout\0")
    assert h.ioctl(fd, U.DMA_BUF_SET_NAME_B, name) == 0 and buf.buf_name == "scanout"
    with pytest.raises(OSError) as e:
        h.ioctl(fd, U.DMA_BUF_SET_NAME_B, bytearray(b"x" * 40))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        h.ioctl(fd, 0x6200 | 0x7F)
    assert e.value.errno == errno.ENOTTY
    imp = DeviceImporter("dev")
    imp.attach(buf)  # the attachment holds a reference: closing the fd keeps the buffer
    h.close(fd)
    assert h.kernel.live.get("dma-buf") == 1
    imp.teardown()
    assert h.leaks() == []
    with pytest.raises(OSError) as e:
        core.dma_buf_get(h.proc, fd)
    assert e.value.errno == errno.EBADF


def test_pinning_device_memory_is_charged_to_dmem_and_refused_past_the_limit():
    from passthru.kernel.cgroup.dmem import DmemRegion

    h = SimHost()
    vram = DmemRegion("drm/gpu0/vram0", limit=6 * PAGE)
    a_buf = movable_dmabuf(h.kernel, 4 * PAGE, dmem=vram)
    b_buf = movable_dmabuf(h.kernel, 4 * PAGE, dmem=vram)
    first, second = DeviceImporter("a", dynamic=False), DeviceImporter("b", dynamic=False)
    first.attach(a_buf)
    first.map()  # pin on map: 4 pages charged
    assert vram.usage == 4 * PAGE
    second.attach(b_buf)
    with pytest.raises(OSError) as e:
        second.map()
    assert e.value.errno == errno.EAGAIN and "dmem_cgroup_try_charge" in str(e.value)
    assert vram.usage == 4 * PAGE and b_buf.priv.pin_count == 0  # nothing half-pinned
    assert second.attach_.pins == 0 and second.attach_.mapping is None
    first.teardown()
    assert vram.usage == 0
    second.map()
    assert vram.usage == 4 * PAGE
    second.teardown()
    a_buf.put()
    b_buf.put()
    assert h.leaks() == [] and h.sched.violations == []


def test_mapping_type_negotiation_is_a_profile_switched_proposal():
    h = SimHost()  # linux-7.1: not there
    buf = mock_dmabuf(h.kernel, PAGE)
    ops = DmaBufAttachOps(allow_peer2peer=True, invalidate=lambda a: None)
    with pytest.raises(OSError) as e:
        core.dma_buf_mapping_attach(buf, "dev", ops, ["pal", "sgt"])
    assert e.value.errno == errno.EOPNOTSUPP and "proposal" in str(e.value)
    buf.put()

    h = SimHost(profile="rfc-dmabuf-mapping-types")
    buf = mock_dmabuf(h.kernel, PAGE)  # offers pal and sgt
    moved = movable_dmabuf(h.kernel, PAGE)  # offers sgt only
    a = core.dma_buf_mapping_attach(buf, "dev", ops, ["pal", "sgt"])
    assert a.mapping_type == "pal"
    m = core.dma_buf_map_attachment_unlocked(a)
    assert m.kind == "pal" and m.ranges[0].dma == m.ranges[0].phys
    with pytest.raises(OSError) as e:
        core.dma_buf_mapping_attach(moved, "dev", ops, ["pal"])
    assert e.value.errno == errno.EOPNOTSUPP and "offers ['sgt']" in str(e.value)
    b = core.dma_buf_mapping_attach(moved, "dev", ops, ["pal", "sgt"])
    assert b.mapping_type == "sgt"
    core.dma_buf_unmap_attachment_unlocked(a)
    core.dma_buf_detach(buf, a)
    core.dma_buf_detach(moved, b)
    buf.put()
    moved.put()
    assert h.leaks() == [] and h.sched.violations == []


def test_importer_reaching_for_struct_page_is_flagged():
    h = SimHost()
    buf, imp = movable_attached(h, "sloppy")
    imp.map()
    sgt = imp.attach_.mapping.sgt
    assert [(sg.dma_address, sg.dma_length) for sg in sgt] == [
        (d, n) for d, n, _ in imp.attach_.mapping.ranges]
    assert h.sched.violations == []
    sgt[0].page  # noqa: B018 - the access itself is what is checked
    assert [v.kind for v in h.sched.violations] == ["sgt-page-access"]
    assert "sloppy" in h.sched.violations[0].message
    imp.teardown()
    buf.put()
