"""dma-buf races and refusals of the seed discussion (KERNEL.md §1).

- revoke racing an importer that unmaps lazily: under 6.19 revoke returns at once and the
  exporter reclaims memory the importer still reads (violation); 7.1 waits for the unmap;
- revoke racing an importer whose DMA is in flight: an importer that drains it inside its
  invalidate callback is safe; one whose callback returns first writes after invalidation;
- a buffer move racing a dynamic importer's DMA: an importer that publishes a fence for its
  job is safe (the exporter waits); one that DMAs without a fence loses its memory mid-job;
- a move racing a static importer's map (pin on map, or wait for the move's fence; with
  ``--faults``, a move whose allocation fails must not leave the map waiting forever);
- a pinned (static) importer attaching to a revocable exporter: refused under 6.19 (at map:
  vfio's pin op) and 7.1 (at attach: dma_buf_attach_revocable) — "refused, as designed";
- a compositor importing a client's revocable buffer: a compositor that refuses revocable
  buffers is safe; one that accepts them is shot down when the client revokes.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ..kapi import (
    REVOCABLE,
    CompositorImporter,
    DeviceImporter,
    DmaBuf,
    ExporterOps,
    QuiescingImporter,
    RwSem,
    Sandbox,
    alloc_ram,
    dma_buf_get,
    dma_buf_mappings_backed,
    dmabuf_of,
    export,
    free_ram,
    kerr,
    kvm_legacy_map,
    mapping,
    migrate_buffer,
    movable_dmabuf,
    pin_user_pages,
    reclaim_buffer,
    revocable_dmabuf,
    revoke,
    revoke_buffer,
    scenario,
)
from ..uapi import dma_heap as H
from ..uapi import linux as L
from ..uapi import udmabuf as UD

PAGE = 4096


def _watch(s: Sandbox) -> None:
    s.invariant("dma-buf-mapping-backed", lambda: dma_buf_mappings_backed(s.host))


def _against_revoke(s: Sandbox, buf: DmaBuf, imp: DeviceImporter, name: str,
                    job: Callable[[], object]) -> None:
    """``job`` (the importer's device, task ``name``) races the exporter revoking the buffer
    and reclaiming its memory (a device reset, a BAR reassigned); then teardown."""

    def device() -> None:
        try:
            job()
        except OSError:
            return  # revoked and unmapped: mapping again fails with ENODEV, as designed

    def exporter() -> None:
        revoke_buffer(buf)
        reclaim_buffer(buf)

    s.spawn(name, device)
    s.spawn("exporter", exporter)

    def teardown() -> None:
        imp.teardown()
        buf.put()

    s.final("teardown", lambda: teardown())  # type: ignore[func-returns-value]
    _watch(s)


def _revoke_vs_lazy(s: Sandbox) -> None:
    buf = revocable_dmabuf(s.host, 2 * PAGE)
    imp = DeviceImporter("odp-like", unmap="work")
    imp.attach(buf)

    def reads() -> None:
        imp.dma_read(0, 8)
        imp.dma_read(8, 8)  # may fall between invalidation and the work item's unmap

    _against_revoke(s, buf, imp, "importer", reads)


@scenario(profiles=("linux-6.19",), expect="violation")
def revoke_vs_lazy_importer_6_19(s: Sandbox) -> None:
    """6.19: revoke does not wait for the importer's unmap; reclaimed memory is read."""
    _revoke_vs_lazy(s)


@scenario(profiles=("linux-7.1",), expect="safe")
def revoke_vs_lazy_importer(s: Sandbox) -> None:
    """7.1: revoke waits for fences and then for every importer's unmap before reclaiming."""
    _revoke_vs_lazy(s)


def _revoke_vs_quiescing(s: Sandbox, drain: bool) -> None:
    buf = revocable_dmabuf(s.host, 2 * PAGE)
    imp = QuiescingImporter("nic", drain=drain)
    imp.attach(buf)
    # one job, two writes
    _against_revoke(s, buf, imp, "device",
                    lambda: imp.dma_burst(0, [b"first-half", b"second-half"]))


@scenario(profiles=("linux-7.1",), expect="safe")
def revoke_vs_quiescing_importer(s: Sandbox) -> None:
    """7.1: the importer's invalidate callback drains its in-flight DMA, then unmaps, before
    returning — DMA finishing inside the callback is legal."""
    _revoke_vs_quiescing(s, drain=True)


@scenario(profiles=("linux-7.1",), expect="violation")
def revoke_vs_importer_not_quiescing(s: Sandbox) -> None:
    """7.1: the callback returns with DMA still in flight; the job writes after invalidation."""
    _revoke_vs_quiescing(s, drain=False)


def _move_vs_importer(s: Sandbox, fenced: bool) -> None:
    buf = movable_dmabuf(s.host, 2 * PAGE)
    imp = DeviceImporter("nic", uses_fences=fenced)
    imp.attach(buf)

    def importer() -> None:
        imp.dma_write(0, b"job-data")

    def mover() -> None:
        migrate_buffer(buf, "system")

    s.spawn("importer", importer)
    s.spawn("migrate", mover)

    def teardown() -> None:
        imp.teardown()
        buf.put()

    s.final("teardown", lambda: teardown())  # type: ignore[func-returns-value]
    _watch(s)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def move_vs_dynamic_importer(s: Sandbox) -> None:
    """A move races a dynamic importer whose DMA job is fenced: the move waits for it."""
    _move_vs_importer(s, fenced=True)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="violation")
def move_vs_unfenced_importer(s: Sandbox) -> None:
    """The importer DMAs without publishing a fence: the move frees memory under the job."""
    _move_vs_importer(s, fenced=False)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def move_vs_static_importer(s: Sandbox) -> None:
    """A move races a static importer's map: whichever wins, the other copes (the map pins, so
    the move is EBUSY; or the map waits for the move's fence). Under ``--faults`` the move's
    allocation fails: its fence must not be left unsignaled, or the map waits forever."""
    buf = movable_dmabuf(s.host, 2 * PAGE)
    imp = DeviceImporter("scanout", dynamic=False)
    imp.attach(buf)
    imp.map()
    imp.dma_write(0, b"frame")
    imp.teardown()  # unpinned again: the buffer may move
    imp.attach(buf)
    seen: list[bytes] = []

    def importer() -> None:
        try:
            seen.append(imp.dma_read(0, 5))  # maps (pin on map) under the resv lock
        except OSError:
            pass

    def mover() -> None:
        try:
            migrate_buffer(buf, "system")
        except OSError:
            pass  # pinned (EBUSY), or the new placement could not be allocated (ENOMEM)

    s.spawn("migrate", mover)  # first: the default schedule reaches the move's fault points
    s.spawn("importer", importer)

    def check() -> str | None:
        if buf.resv.lock.is_locked():  # a task never finished (deadlock already reported)
            return f"{buf.name}'s resv lock is still held after every task ended"
        imp.teardown()
        buf.put()
        if seen not in ([b"frame"], []) or (not seen and not s.sched.faults_failed):
            return f"the static importer read {seen!r}, not the frame"
        return None

    s.final("data-follows", check)
    _watch(s)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def pinned_importer_vs_revocable_exporter(s: Sandbox) -> None:
    """A static (pinned) importer and a revocable exporter: refused, as designed."""
    buf = revocable_dmabuf(s.host, PAGE, require_p2p=False)
    imp = DeviceImporter("static-dev", dynamic=False)
    outcome: dict[str, int] = {}

    def importer() -> None:
        try:
            imp.attach(buf)
        except OSError as e:
            outcome["attach"] = e.errno or 0
            return
        try:
            imp.map()
        except OSError as e:
            outcome["map"] = e.errno or 0

    s.spawn("importer", importer)
    want = ("attach" if s.profile.dma_buf_attach_revocable else "map", errno.EOPNOTSUPP)

    def check() -> str | None:
        got = next(iter(outcome.items()), None)
        imp.teardown()
        buf.put()
        if got != want and not s.sched.faults_failed:
            return f"expected {want[0]} to fail with EOPNOTSUPP, got {got}"
        return None

    s.final("refused-as-designed", check)


def _compositor(s: Sandbox, accepts_revocable: bool) -> None:
    buf = revocable_dmabuf(s.host, PAGE)  # a client's buffer, backed by a revocable exporter
    comp = CompositorImporter(accepts_revocable=accepts_revocable)

    def compositor() -> None:
        try:
            comp.attach(buf)
        except OSError:
            return  # refused: the compositor falls back to a copy
        try:
            comp.map()
        except OSError:
            return
        comp.dma_read(0, 16)

    def client() -> None:
        revoke_buffer(buf)

    s.spawn("compositor", compositor)
    s.spawn("client", client)

    def teardown() -> None:
        comp.teardown()
        buf.put()

    s.final("teardown", lambda: teardown())  # type: ignore[func-returns-value]


@scenario(profiles=("linux-7.1",), expect="safe")
def compositor_refuses_revocable(s: Sandbox) -> None:
    """A compositor that refuses revocable client buffers cannot be shot down."""
    _compositor(s, accepts_revocable=False)


@scenario(profiles=("linux-7.1",), expect="violation")
def compositor_shot_down(s: Sandbox) -> None:
    """A compositor that accepts a client's revocable buffer is shot down by a revoke."""
    _compositor(s, accepts_revocable=True)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def kvm_legacy_gup_on_heap_buffer(s: Sandbox) -> None:
    """The pKVM/crosvm report: mmap a dma-heap buffer and GUP it for the guest. The heap's
    special PTEs make pin_user_pages fail with EFAULT — refused, as designed."""
    host = s.host
    heap = host.open("/dev/dma_heap/system", L.O_RDWR | L.O_CLOEXEC)
    alloc = H.dma_heap_allocation_data(len=4 * PAGE, fd_flags=L.O_RDWR | L.O_CLOEXEC)
    host.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, alloc)
    outcome: list[int] = []

    def vmm() -> None:
        try:
            kvm_legacy_map(host, alloc.fd, 4 * PAGE)
        except OSError as e:
            outcome.append(e.errno or 0)

    s.spawn("vmm", vmm)
    s.final("refused-as-designed", lambda: None if outcome == [errno.EFAULT] else
            f"expected pin_user_pages to fail with EFAULT, got {outcome or 'success'}")


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def udmabuf_is_the_pinnable_alternative(s: Sandbox) -> None:
    """The supported route: a udmabuf made from a sealed memfd; the VMM pins the memfd's
    pages for the guest while a device imports the same memory through the dma-buf."""
    host = s.host
    memfd = host.memfd_create("guest-ram", L.MFD_ALLOW_SEALING)
    host.ftruncate(memfd, 4 * PAGE)
    host.fcntl(memfd, L.F_ADD_SEALS, L.F_SEAL_SHRINK)
    dev = host.open("/dev/udmabuf", L.O_RDWR)
    fd = host.ioctl(dev, UD.UDMABUF_CREATE, UD.udmabuf_create(memfd=memfd, offset=0,
                                                              size=4 * PAGE))
    ram = host.mmap(0, 4 * PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, memfd, 0)
    buf = dma_buf_get(host, fd)
    nic = DeviceImporter("nic")
    nic.attach(buf)
    pins: list[object] = []

    def vmm() -> None:
        pins.append(pin_user_pages(host, ram, 4 * PAGE, write=True))
        host.poke(ram, b"from-the-guest")

    def device() -> None:
        nic.dma_write(0x100, b"from-the-nic")

    s.spawn("vmm", vmm)
    s.spawn("nic", device)

    def check() -> str | None:
        seen = host.peek(ram + 0x100, 12)
        for p in pins:
            p.unpin()  # type: ignore[attr-defined]
        nic.teardown()
        buf.put()
        if s.sched.faults_failed:
            return None  # an injected failure: only the teardown (leaks) is checked
        if not pins:
            return "pin_user_pages of the memfd mapping failed"
        return None if seen == b"from-the-nic" else f"guest sees {seen!r}, not the DMA"

    s.final("pinnable-and-shared", check)
    _watch(s)


class _VfioBar:
    """The private data of a vfio-pci-like BAR exporter: its memory, its revoked state
    (changed and read under the resv lock) and the device's memory_lock."""

    def __init__(self, s: Sandbox, size: int, map_takes_memory_lock: bool) -> None:
        self.host = s.host
        self.extents = alloc_ram(s.host, size, "vfio-bar")
        self.revoked = s.shared(False, "vdev.revoked")
        self.memory_lock = RwSem(s.sched, "vdev.memory_lock", "vfio_pci_core_device.memory_lock")
        self.map_takes_memory_lock = map_takes_memory_lock
        self.freed = False

    def map(self, att: object) -> object:
        if not self.map_takes_memory_lock:
            return self._map()
        self.memory_lock.down_read()  # resv held by the caller: resv -> memory_lock
        try:
            return self._map()
        finally:
            self.memory_lock.up_read()

    def _map(self) -> object:
        if self.revoked.get():
            raise kerr(errno.ENODEV, "map: the BAR is revoked")
        return mapping([(s, e - s, s) for s, e in self.extents])

    def release(self) -> None:
        if not self.freed:
            self.freed = True
            free_ram(self.host, self.extents)


_VFIO_BAR_OPS = ExporterOps(map=lambda priv, att: priv.map(att),
                            release=lambda priv, buf: priv.release(),
                            memory_model=REVOCABLE, name="vfio-bar")


def _memory_lock_vs_resv(s: Sandbox, map_takes_memory_lock: bool) -> None:
    """vfio-pci's order is memory_lock (rw) -> dma-buf resv -> importer's lock: revoke takes
    memory_lock for write and then the resv. An exporter whose map op (called by importers
    with the resv held) takes memory_lock inverts it."""
    bar = _VfioBar(s, PAGE, map_takes_memory_lock)
    try:
        buf = dmabuf_of(s.host, export(s.host, _VFIO_BAR_OPS, bar, PAGE))
    except OSError:
        bar.release()  # the export failed (an injected fault): give the BAR memory back
        raise
    imp = DeviceImporter("iommufd")
    imp.attach(buf)

    def importer() -> None:
        try:
            imp.map()
        except OSError:
            pass

    def reset() -> None:  # VFIO_DEVICE_RESET: memory_lock for write, then revoke
        bar.memory_lock.down_write()
        try:
            revoke(buf, lambda: bar.revoked.set(True))
        finally:
            bar.memory_lock.up_write()

    s.spawn("importer", importer)
    s.spawn("reset", reset)
    s.final("teardown", lambda: imp.teardown())  # type: ignore[func-returns-value]


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="safe")
def memory_lock_then_resv(s: Sandbox) -> None:
    """The kernel's order (memory_lock -> resv): reset and an importer's map never deadlock."""
    _memory_lock_vs_resv(s, map_takes_memory_lock=False)


@scenario(profiles=("linux-6.19", "linux-7.1"), expect="violation")
def resv_then_memory_lock_abba(s: Sandbox) -> None:
    """An exporter's map op takes memory_lock under the resv: ABBA with a reset's revoke."""
    _memory_lock_vs_resv(s, map_takes_memory_lock=True)
