"""Regressions for dma-buf model defects (issue 7), each failing before its fix.

1. The revoke contract was checked too early: the attachment was marked invalidated before
   the importer's callback ran, so DMA the callback drains before returning was flagged.
2. The movable exporter published its move fence before allocating the new placement; when
   the allocation failed the fence never signalled and a later map waited forever.
"""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from passthru import SimHost
from passthru.check.discover import builtin
from passthru.check.runner import check
from passthru.kernel.dma_buf.importers import DeviceImporter
from passthru.kernel.dma_buf.mock import mock_dmabuf
from passthru.kernel.dma_buf.movable import movable_dmabuf
from passthru.kernel.dma_buf.resv import DMA_RESV_USAGE_BOOKKEEP
from passthru.sim.scheduler import Scheduler

PAGE = 4096
SCENARIOS = {sc.name: sc for sc in builtin()}


def kinds(h):
    return [v.kind for v in h.sched.violations]


# ----- 1. the revoke contract applies once the importer's callback has returned -----------
def test_dma_drained_inside_the_invalidate_callback_is_legal():
    for strategy in ("dfs", "dpor"):
        v = check(SCENARIOS["revoke_vs_quiescing_importer"], "linux-7.1", strategy=strategy)
        assert not v.found, (strategy, [x.text() for x in v.violations])
        assert v.complete


def test_dma_still_in_flight_after_the_callback_returned_is_flagged():
    v = check(SCENARIOS["revoke_vs_importer_not_quiescing"], "linux-7.1")
    assert v.found and v.violations[0].kind == "revoke-contract"


def test_write_inside_the_callback_is_legal_and_after_it_is_not():
    """Directly: a DMA write made while the callback runs passes; the same write after the
    callback returned (the mapping still not unmapped) is a revoke-contract violation."""
    h = SimHost(profile="linux-6.19")  # revoke does not wait for the unmap here
    buf = mock_dmabuf(h.kernel, PAGE)
    imp = DeviceImporter("dev", unmap="never")
    a = imp.attach(buf)
    imp.map()
    during: list[str] = []
    assert a.importer_ops is not None
    plain = a.importer_ops.invalidate
    assert plain is not None

    def callback(attach):
        attach.dma_access(0, 4, True, b"last")  # the job finishing inside the callback
        during.extend(kinds(h))
        plain(attach)

    a.importer_ops = replace(a.importer_ops, invalidate=callback)  # another static table
    buf.priv.revoke(buf)
    assert during == [] and kinds(h) == []
    a.dma_access(0, 4, True, b"late")
    assert kinds(h) == ["revoke-contract"]
    imp.unmap_if_invalidated()
    imp.teardown()
    buf.put()
    assert h.leaks() == []


# ----- 2. a failed move leaves no fence that never signals --------------------------------
def _setup(h):
    buf = movable_dmabuf(h.kernel, 2 * PAGE)
    imp = DeviceImporter("scanout", dynamic=False)  # static: its map waits for KERNEL fences
    imp.attach(buf)
    return buf, imp


def test_failed_move_allocation_does_not_hang_a_later_map():
    clean = SimHost(sched=Scheduler())
    _setup(clean)
    base = clean.sched.faults_seen  # the next fault point is the move's allocation

    h = SimHost(sched=Scheduler(fail_nth={base + 1}))
    buf, imp = _setup(h)
    assert h.sched.faults_seen == base
    old = list(buf.priv.extents)
    allocated = h.kernel.phys.allocated_bytes()
    with pytest.raises(OSError) as e:  # the injected allocation failure fails the move
        buf.priv.migrate(buf, "system")
    assert e.value.errno == errno.ENOMEM
    assert [k for _, k in h.sched.faults_failed] == ["alloc_pages"]
    # The buffer stayed where it was, nothing was allocated, no fence is left pending.
    assert buf.priv.extents == old and buf.priv.placement == "vram" and buf.priv.moves == 0
    assert h.kernel.phys.allocated_bytes() == allocated
    assert not buf.resv.lock.is_locked()

    got: list[bytes] = []
    h.sched.spawn("map", lambda: got.append(imp.dma_read(0, 4)))
    h.sched.run()  # before the fix: "deadlock", the map waiting on fence dmabuf1.move0
    assert kinds(h) == [] and got == [bytes(4)]
    assert buf.resv.pending(DMA_RESV_USAGE_BOOKKEEP) == []  # no fence left pending
    imp.teardown()
    buf.priv.migrate(buf, "system")  # unpinned again, no fault now: the move works
    assert buf.priv.placement == "system" and buf.priv.moves == 1
    buf.put()
    h.exit()
    assert h.leaks() == [] and kinds(h) == []


def test_fail_nth_sweep_of_a_move_racing_a_static_map():
    sc = SCENARIOS["move_vs_static_importer"]
    for profile in sc.profiles:
        v = check(sc, profile, faults=True)
        assert not v.found, (profile, [x.text() for x in v.violations])


def test_move_failing_after_its_fence_is_published_signals_it_with_the_error(monkeypatch):
    """The safety net behind the reorder: a failure after the fence went out signals it with
    the error (dma_fence_set_error + dma_fence_signal) and gives the new placement back."""
    h = SimHost()
    buf, imp = _setup(h)
    allocated = h.kernel.phys.allocated_bytes()

    def copy_fails(old, new):
        raise OSError(errno.EIO, "copy engine hung (injected)")

    monkeypatch.setattr(buf.priv, "_copy", copy_fails)
    with pytest.raises(OSError) as e:
        buf.priv.migrate(buf, "system")
    assert e.value.errno == errno.EIO
    fence = buf.resv.fences[-1][0]
    assert fence.signaled and fence.error == -errno.EIO
    assert h.kernel.phys.allocated_bytes() == allocated and buf.priv.placement == "vram"
    imp.map()  # does not wait forever
    imp.teardown()
    buf.put()
    assert h.leaks() == [] and kinds(h) == []
