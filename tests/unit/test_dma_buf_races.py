"""Data races in the dma-buf model (issue 7 §2): the shared dma-buf state is tracked, a plain
access made without the lock the kernel takes is a ``data-race`` violation naming the state,
and the kernel's own discipline (resv lock, fences, RCU walks, device DMA) is silent.

Each racy program below has a twin that differs only in the lock or the wait; the twin is
explored completely and must be safe, while the explorer still sees the two tasks conflict
(more than one schedule), so the silence is not the tracking going blind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest

from passthru.check.discover import builtin
from passthru.check.runner import Verdict, check
from passthru.check.scenario import Sandbox, Scenario
from passthru.kernel.dma_buf import core
from passthru.kernel.dma_buf.fence import DmaFence
from passthru.kernel.dma_buf.importers import DeviceImporter
from passthru.kernel.dma_buf.mock import mock_dmabuf
from passthru.kernel.dma_buf.movable import MovableExporter, movable_dmabuf
from passthru.kernel.dma_buf.resv import DMA_RESV_USAGE_WRITE

PAGE = 4096
STRATEGIES = ("dfs", "dpor")


def run(fn: Callable[[Sandbox], Any], strategy: str = "dfs", name: str = "t") -> Verdict:
    sc = Scenario(name=f"dma_buf_race_{name}", fn=fn, expect="safe", teardown=False)
    return check(sc, "linux-7.1", strategy=strategy)


def races(v: Verdict) -> list[str]:
    return [x.message for x in v.violations if x.kind == "data-race"]


def race_on(v: Verdict, location: str) -> str:
    """The first data race of ``v``, which must name ``location``."""
    got = races(v)
    assert got and location in got[0], [x.text() for x in v.violations]
    return got[0]


def assert_silent(v: Verdict) -> None:
    assert not v.found, [x.text() for x in v.violations]
    assert v.complete
    assert v.schedules > 1, "the two tasks never conflicted: their accesses went untracked"


# ----- an attachment's mapping state: the resv lock ----------------------------------------
def _poll_mapping(locked: bool) -> Callable[[Sandbox], None]:
    """One task maps (under the resv lock, as it must); a buggy driver thread polls the
    attachment's mapping to decide whether to program the device — without the lock."""

    def fn(s: Sandbox) -> None:
        buf = mock_dmabuf(s.host.kernel, PAGE)
        imp = DeviceImporter("nic")
        a = imp.attach(buf)
        seen: list[bool] = []

        def poll() -> None:
            if locked:
                buf.resv.lock_ctx()
            try:
                seen.append(a.mapping is not None)
            finally:
                if locked:
                    buf.resv.unlock()

        s.spawn("map", imp.map)
        s.spawn("poll", poll)

    return fn


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reading_an_attachments_mapping_without_the_resv_lock_is_a_race(strategy: str) -> None:
    v = run(_poll_mapping(locked=False), strategy, "poll")
    got = race_on(v, "dmabuf1.attach(nic)")
    assert "poll" in got and "map" in got


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reading_it_under_the_resv_lock_is_silent(strategy: str) -> None:
    assert_silent(run(_poll_mapping(locked=True), strategy, "poll_locked"))


def _lazy_unmap(locked: bool) -> Callable[[Sandbox], None]:
    """An importer whose worker clears its needs-unmap flag without the resv lock, while the
    exporter's revoke runs the invalidate callback (which sets it, under the lock)."""

    def fn(s: Sandbox) -> None:
        buf = mock_dmabuf(s.host.kernel, PAGE)
        imp = DeviceImporter("odp", unmap="never")
        imp.attach(buf)
        imp.map()

        def worker() -> None:
            if locked:
                imp.unmap_if_invalidated()  # takes the resv lock, then looks
            else:
                imp.needs_unmap = False  # the bug: the driver's own state, unlocked

        s.spawn("worker", worker)
        s.spawn("revoke", lambda: cast(Any, buf.priv).revoke(buf))

    return fn


def test_an_importers_private_state_written_without_its_lock_is_a_race() -> None:
    race_on(run(_lazy_unmap(locked=False), name="lazy"), "odp.importer")


def test_the_same_state_under_the_resv_lock_is_silent() -> None:
    v = check(Scenario(name="lazy_locked", fn=_lazy_unmap(locked=True), teardown=False),
              "linux-6.19")  # 6.19: revoke does not wait for the never-unmapping importer
    assert_silent(v)


# ----- the movable exporter's placement -----------------------------------------------------
def _peek_placement(locked: bool) -> Callable[[Sandbox], None]:
    """A driver path that reads which memory backs the buffer while a migration moves it."""

    def fn(s: Sandbox) -> None:
        buf = movable_dmabuf(s.host.kernel, PAGE)
        exp = cast(MovableExporter, buf.priv)

        def peek() -> None:
            if locked:
                buf.resv.lock_ctx()
            try:
                list(exp.extents)
            finally:
                if locked:
                    buf.resv.unlock()

        s.spawn("peek", peek)
        s.spawn("migrate", exp.migrate, buf, "system")

    return fn


def test_the_placement_read_without_the_resv_lock_races_a_move() -> None:
    race_on(run(_peek_placement(locked=False), name="placement"), "dmabuf1.placement")


def test_the_placement_read_under_the_resv_lock_is_silent() -> None:
    assert_silent(run(_peek_placement(locked=True), name="placement_locked"))


# ----- fences: signal -> wait (or seeing it signalled) is happens-before --------------------
def _handoff(sync: str) -> Callable[[Sandbox], None]:
    """A producer writes shared state and signals a fence; a consumer then writes the state.
    ``sync``: how the consumer orders itself after the producer — "wait" (dma_fence_wait),
    "test" (dma_resv_test_signaled until true: an RCU walk plus the signalled bit), or
    "none" (it does not)."""

    def fn(s: Sandbox) -> None:
        buf = mock_dmabuf(s.host.kernel, PAGE)
        data = s.shared(0, "job-result")
        fence = DmaFence(s.sched, "job")
        buf.resv.lock_ctx()
        buf.resv.add_fence(fence, DMA_RESV_USAGE_WRITE)
        buf.resv.unlock()

        def producer() -> None:
            data.set(1)
            s.point("job")
            fence.signal()

        def consumer() -> None:
            if sync == "wait":
                fence.wait()
            elif sync == "test":
                while not buf.resv.test_signaled(DMA_RESV_USAGE_WRITE):
                    s.sched.yield_("poll")
            data.set(2)

        s.spawn("producer", producer)
        s.spawn("consumer", consumer)

    return fn


@pytest.mark.parametrize("sync", ["wait", "test"])
def test_a_fence_orders_the_waiter_after_the_signaller(sync: str) -> None:
    assert_silent(run(_handoff(sync), name=f"fence_{sync}"))


def test_without_the_fence_the_handoff_is_a_race() -> None:
    race_on(run(_handoff("none"), name="fence_none"), "job-result")


# ----- the resv fence list: written under the lock, walked by RCU ---------------------------
def _add_fences(locked: bool) -> Callable[[Sandbox], None]:
    def fn(s: Sandbox) -> None:
        buf = mock_dmabuf(s.host.kernel, PAGE)

        def job(name: str) -> None:
            f = DmaFence(s.sched, name)
            if locked:
                buf.resv.lock_ctx()
            try:
                buf.resv.add_fence(f, DMA_RESV_USAGE_WRITE)
            finally:
                if locked:
                    buf.resv.unlock()
            f.signal()

        def waiter() -> None:
            buf.resv.wait_timeout(DMA_RESV_USAGE_WRITE)  # an unlocked RCU walk: marked

        s.spawn("a", job, "a")
        s.spawn("b", job, "b")
        s.spawn("waiter", waiter)

    return fn


def test_adding_fences_without_the_lock_is_a_race_and_a_locking_violation() -> None:
    v = run(_add_fences(locked=False), name="fences")
    kinds = {x.kind for x in v.violations}
    assert {"dma-buf-locking", "data-race"} <= kinds, [x.text() for x in v.violations]
    assert any("dmabuf1.resv.fences" in m for m in races(v))


def test_adding_them_under_the_lock_with_an_rcu_reader_is_silent() -> None:
    assert_silent(run(_add_fences(locked=True), name="fences_locked"))


# ----- udmabuf: the kernel's own unlocked sg-table cache ------------------------------------
def _udmabuf_sync(locked: bool) -> Callable[[Sandbox], None]:
    """Two threads DMA_BUF_IOCTL_SYNC(START) one udmabuf: begin_cpu_udmabuf checks and sets
    ubuf->sg with no lock (a real kernel race: an sg table leaks; the 2026 patch "udmabuf:
    serialize the sg_table cache under the reservation lock" takes the resv lock, which
    ``locked`` models)."""

    def fn(s: Sandbox) -> None:
        from passthru.uapi import linux as L
        from passthru.uapi import udmabuf as UD

        host = s.host
        memfd = host.memfd_create("ram", L.MFD_ALLOW_SEALING)
        host.ftruncate(memfd, PAGE)
        host.fcntl(memfd, L.F_ADD_SEALS, L.F_SEAL_SHRINK)
        dev = host.open("/dev/udmabuf", L.O_RDWR)
        fd = host.ioctl(dev, UD.UDMABUF_CREATE, UD.udmabuf_create(memfd=memfd, size=PAGE))
        buf = core.dma_buf_get(host.proc, fd)

        def sync() -> None:
            if locked:
                buf.resv.lock_ctx()
                try:
                    assert buf.ops.begin_cpu_access is not None
                    buf.ops.begin_cpu_access(buf, 0)
                finally:
                    buf.resv.unlock()
            else:
                core.dma_buf_begin_cpu_access(buf, 0)

        s.spawn("sync1", sync)
        s.spawn("sync2", sync)

    return fn


def test_concurrent_udmabuf_cpu_access_races_on_the_sg_cache_as_in_the_kernel() -> None:
    got = races(run(_udmabuf_sync(locked=False), name="udmabuf"))
    assert got and got[0].startswith("udmabuf"), got


def test_the_proposed_fix_under_the_resv_lock_is_silent() -> None:
    assert_silent(run(_udmabuf_sync(locked=True), name="udmabuf_locked"))


# ----- the built-in scenarios: verdicts and kinds -------------------------------------------
KINDS = {
    "revoke_vs_lazy_importer_6_19": "physical",
    "revoke_vs_importer_not_quiescing": "revoke-contract",
    "move_vs_unfenced_importer": "physical",
    "compositor_shot_down": "compositor-shot-down",
    "resv_then_memory_lock_abba": "lock-order",
}
BUILTIN = [(sc, p) for sc in builtin() if sc.module.endswith("scenarios.dma_buf")
           for p, _ in sc.variants()]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("sc,profile", BUILTIN, ids=[f"{sc.name}@{p}" for sc, p in BUILTIN])
def test_builtin_dma_buf_scenarios_keep_their_verdict_and_kind(sc: Scenario, profile: str,
                                                                strategy: str) -> None:
    """Safe ones have no data race in any explored schedule; buggy ones are found as the bug
    they model (device DMA is judged by physical truth, not as a race)."""
    v = check(sc, profile, strategy=strategy)
    if sc.expect == "safe":
        assert not v.found and v.complete, [x.text() for x in v.violations]
    else:
        assert v.found and v.violations[0].kind == KINDS[sc.name], \
            [x.text() for x in v.violations]
        assert not races(v), races(v)
