"""The dma-buf core: export, attach, map, pin, invalidate, and the buffer's file
(drivers/dma-buf/dma-buf.c, include/linux/dma-buf.h).

A DmaBuf is a file (its fd is what userspace passes around) with the exporter's ops, a
reservation object (``resv``: the buffer's ww_mutex and fences) and its attachments. The ops
are a static table (:class:`DmaBufOps`, a ``const struct dma_buf_ops``) and the exporter's
state is a separate ``priv``, as dma_buf_export(exp_info) takes them: an op finds its state as
``dmabuf.priv`` (or ``attach.dmabuf.priv``). An exporter with pin/unpin is *dynamic*; an
importer with importer ops (:class:`DmaBufAttachOps`, its state in ``attach.importer_priv``)
is *dynamic* and must accept invalidation (``move_notify``, renamed ``invalidate_mappings``
in 7.1).

Locking convention (dma-buf.c, since 6.2), enforced like lockdep — a call made with the wrong
lock state is a ``dma-buf-locking`` violation naming the call:
- importer must hold the resv lock around pin/unpin, map/unmap_attachment, vmap/vunmap;
- importer must not hold it around attach, dynamic_attach, detach, mmap, begin/end_cpu_access
  and every ``*_unlocked`` call (they take it themselves).
The exporter's pin/unpin/map/unmap/vmap/vunmap ops run inside those calls, so the core's
assertion is theirs too; attach/detach/begin/end_cpu_access ops run without the lock.

Memory models (KERNEL.md §1), explicit here: an exporter's table offers ``pinned``,
``revocable`` (with or without un-revoke) or ``movable``; an importer's table lists what it
tolerates. Attach negotiates (see :func:`negotiate`) and refuses a pair with the errno the
kernel (or the proposal) gives.

Physical truth: an importer's DMA through its mapping (:meth:`DmaBufAttachment.dma_access`)
resolves in hw; between invalidation (once the importer's callback has returned: it may
drain DMA in flight inside it) and unmap it may read (speculatively) but a write is a
``revoke-contract`` violation; after the exporter reclaimed the memory, any access is a
``physical`` violation.

Invariants: an attachment is on its buffer's list from attach to detach, and a buffer is
released with none left and not vmapped (else ``dma-buf-lifetime``); an attachment has a
mapping exactly between map and unmap (unmapping an unmapped one is ``dma-buf-mapping``);
``pins`` never goes below zero (``dma-buf-pin``) and a pin taken on map is dropped by the
unmap; an exporter is dynamic iff it has both pin and unpin (dma_buf_export refuses one
alone).

Units: sizes, offsets and lengths in bytes; DMA and physical addresses are byte addresses;
model time in nanoseconds (the 7.1 revoke's 1 s wait for unmaps).

Which lock protects which field (sim/track.py; the race detector judges plain accesses):
- :data:`db_list` (the live dma-bufs, a per-kernel static, ``dma_buf.db_list``): the kernel's
  ``db_list`` mutex, implicit — an ``atomic`` list; export adds, release removes;
- ``DmaBuf.attachments`` (dmabuf->attachments): the resv lock — attach and detach take it
  around the update, dma_buf_invalidate_mappings asserts it while walking the list; the
  release reads it (and ``vmap_count``) last, when no other reference is left;
- ``DmaBufAttachment.mapping``, ``.invalidated``, ``.pinned_on_map`` (location
  ``<buf>.attach(<dev>)``): the resv lock — map and unmap assert it; the device's DMA and the
  revoking exporter's wait for unmaps read the mapping marked (see below);
- ``DmaBufAttachment.pins``: the resv lock — dma_buf_pin and dma_buf_unpin assert it;
- ``DmaBuf.vmap_count`` (dmabuf->vmapping_counter): the resv lock — dma_buf_vmap/vunmap
  assert it;
- ``DmaBuf.buf_name`` (dmabuf->name, DMA_BUF_SET_NAME): ``name_lock``, a spinlock the model
  leaves implicit: an atomic cell;
- ``DmaBuf.resv``'s fence list: resv.py; a fence's signalled bit: fence.py;
- ``DmaBuf.ops``, ``.priv``, ``.size_``, ``.exp_name`` and an attachment's ``dev``,
  ``importer_ops``, ``importer_priv``, ``peer2peer``, ``mapping_type``: written once by the
  task that exports (attaches) before the object is shared, read-only afterwards: no lock;
- ``DmaBufAttachment.priv``: the exporter's (set by its attach op, dropped by its detach op,
  both while the attachment is off the list).
Device DMA (:meth:`DmaBufAttachment.dma_access`) is hardware: its reads of the mapping it was
programmed with are marked, and its memory accesses end in hw/physmem, whose contents are
marked and whose ownership check is the physical-truth oracle — physical truth and the revoke
contract judge the DMA, not the race detector. The exporter's revoking wait for unmaps (7.1:
a kref and a completion in vfio) reads the attachments' mapping state marked, ordered by the
wake-up of the unmapping importer.

Leaves out: sync_file import/export, debugfs, fdinfo, the vmap iosys_map details,
cross-device fence signalling paths, the fence wait of begin_cpu_access.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import Fault, kerr
from ...sim import kinds, track
from ...sim.fields import InCell, Plain
from ...sim.locks import WaitQueue
from ...sim.track import Cell, TrackedList
from ...uapi import dma_buf as U
from ...uapi import linux as L
from ..dma.scatterlist import MAX_SG_ENT_SZ, SgTable, segments
from ..fs.file import File, fput
from ..fs.ioctl_table import IoctlTable
from ..init import kernel_static
from .mapping import DmaMapping as DmaMapping
from .mapping import DmaRange as DmaRange
from .mapping import dma_direct as dma_direct
from .mapping import mmap_needs_shared as mmap_needs_shared
from .mapping import sigbus_past_the_end as sigbus_past_the_end
from .mapping import vmap_address as vmap_address
from .resv import DMA_RESV_USAGE_BOOKKEEP, DMA_RESV_USAGE_KERNEL, DmaResv

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process
    from ..fs.uaccess import UserArg
    from ..mm.vma import Vma

# The violations this file reports (sim/kinds.py).
kinds.register("dma-buf-lifetime", "dma-buf")
kinds.register("dma-buf-mapping", "dma-buf")
kinds.register("dma-buf-locking", "dma-buf")
kinds.register("dma-buf-pin", "dma-buf")
kinds.register("revoke-contract", "dma-buf")
kinds.register("revoke-timeout", "dma-buf")
kinds.register("sgt-page-access", "dma-buf")

PINNED, REVOCABLE, MOVABLE = "pinned", "revocable", "movable"
MEMORY_MODELS = (PINNED, REVOCABLE, MOVABLE)

db_list = kernel_static(  # the live dma-bufs: dma_buf_export adds, release removes
    "dma_buf.db_list", lambda k: TrackedList["DmaBuf"](label="dma_buf.db_list", atomic=True))


@dataclass(frozen=True, kw_only=True)
class DmaBufOps:
    """``const struct dma_buf_ops``: one static table per kind of exporter; an op left None is
    absent, as a NULL op is in C. Every op finds the exporter's state in ``dmabuf.priv``.

    map_dma_buf, unmap_dma_buf and release are mandatory (dma_buf_export checks); pin and
    unpin come together. The last four fields are passthru's: the memory model the exporter
    offers (KERNEL.md §1, "the three models"), whether a revoke can be undone, the name in
    messages and events, and the mapping types of the 2026 proposal."""

    attach: Callable[[DmaBuf, DmaBufAttachment], None] | None = None  # may raise OSError
    detach: Callable[[DmaBuf, DmaBufAttachment], None] | None = None
    pin: Callable[[DmaBufAttachment], None] | None = None
    unpin: Callable[[DmaBufAttachment], None] | None = None
    map_dma_buf: Callable[[DmaBufAttachment, int], DmaMapping] | None = None  # (attach, dir)
    unmap_dma_buf: Callable[[DmaBufAttachment, DmaMapping, int], None] | None = None
    release: Callable[[DmaBuf], None] | None = None
    mmap: Callable[[DmaBuf, Vma], None] | None = None
    # vm_ops->fault of the mmap: (dmabuf, vma, start, end, write) -> (start, end, phys) pieces
    fault: Callable[[DmaBuf, Vma, int, int, bool], Sequence[tuple[int, int, int]]] | None = None
    vmap: Callable[[DmaBuf], int] | None = None
    vunmap: Callable[[DmaBuf], None] | None = None
    begin_cpu_access: Callable[[DmaBuf, int], None] | None = None  # (dmabuf, direction)
    end_cpu_access: Callable[[DmaBuf, int], None] | None = None
    memory_model: str = PINNED
    can_unrevoke: bool = False
    exp_name: str = "exporter"
    mapping_types: tuple[str, ...] = ("sgt",)


@dataclass(frozen=True)
class DmaBufAttachOps:
    """``const struct dma_buf_attach_ops``, plus what the importer tolerates (passthru's
    negotiation). ``invalidate`` is move_notify (``invalidate_mappings`` in 7.1): called with
    the resv lock held; the importer finds its state in ``attach.importer_priv``. ``name``
    names the importer in refusals (empty: the attaching device's name)."""

    invalidate: Callable[[DmaBufAttachment], None] | None = None
    allow_peer2peer: bool = False
    tolerates: frozenset[str] = frozenset(MEMORY_MODELS)
    name: str = ""


def _not_a_dma_buf_ioctl(dmabuf: DmaBuf, proc: Process, cmd: int, arg: UserArg) -> int:
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: not a dma-buf ioctl")


DMA_BUF_IOCTLS = IoctlTable("dma-buf", _not_a_dma_buf_ioctl)  # dma_buf_ioctl's switch


class DmaBuf(File):
    kind = "dma-buf"
    noexec = False
    ioctl_table = DMA_BUF_IOCTLS

    def __init__(self, kernel: Kernel, ops: DmaBufOps, size: int, flags: int, priv: Any) -> None:
        super().__init__(kernel, flags, f"dmabuf{kernel.next_id('dmabuf')}")
        self.ops = ops
        self.size_ = size
        self.priv = priv
        self.exp_name = ops.exp_name
        self.resv = DmaResv(kernel.sched, self.name)
        self.attachments: TrackedList[DmaBufAttachment] = TrackedList(
            label=f"{self.name}.attachments")
        self._buf_name: Cell[str] = Cell("", label=f"{self.name}.name", atomic=True)
        self._vmap_count: Cell[int] = Cell(0, label=f"{self.name}.vmapping_counter")
        self.i_mmap_writable = 0
        self.sched = kernel.sched
        # Made here, not on first use: a location is named by the task that creates it.
        self._unmap_wq = WaitQueue(self.sched, f"{self.name}.unmaps")
        db_list(kernel).append(self)

    def exporter_wq(self) -> WaitQueue:
        """Where a revoking exporter waits for importers to unmap."""
        return self._unmap_wq

    buf_name = InCell[str]()  # dmabuf->name, under the name_lock spinlock
    vmap_count = InCell[int]()  # dmabuf->vmapping_counter (resv lock)

    @property
    def dynamic(self) -> bool:
        """dma_buf_is_dynamic: the exporter has pin/unpin."""
        return self.ops.pin is not None

    def size(self) -> int:
        return self.size_

    def release(self) -> None:
        if self.attachments:
            self.sched.violation("dma-buf-lifetime", f"{self.name} released with "
                                 f"{len(self.attachments)} attachment(s) left")
        if self.vmap_count:
            self.sched.violation("dma-buf-lifetime", f"{self.name} released while vmapped")
        assert self.ops.release is not None  # dma_buf_export refused a table without it
        self.ops.release(self)
        db_list(self.kernel).remove(self)

    # ----- userspace: mmap and ioctls ----------------------------------------------------
    def mmap(self, proc: Process, vma: Vma) -> None:
        """dma_buf_mmap_internal."""
        if self.ops.mmap is None:
            raise kerr(errno.EINVAL, f"mmap: {self.exp_name} dma-buf has no mmap op")
        if vma.pgoff + (vma.end - vma.start) > self.size_:
            raise kerr(errno.EINVAL, f"mmap: [{vma.pgoff:#x}, +{vma.end - vma.start:#x}) "
                       f"past the dma-buf's {self.size_:#x} bytes")
        self.ops.mmap(self, vma)

    def fault(self, vma: Vma, start: int, end: int, write: bool) -> list[tuple[int, int, int]]:
        if self.ops.fault is None:
            raise Fault(vma.start + (start - vma.pgoff), "SIGBUS", f"{self.exp_name}: no fault")
        return list(self.ops.fault(self, vma, start, end, write))



# ----- the dma-buf file's ioctls (dma_buf_ioctl) --------------------------------------------
# The buffer is the file's private data, held by the syscall's fdget for the whole call.
@DMA_BUF_IOCTLS.handler(U.DMA_BUF_IOCTL_SYNC)
def dma_buf_ioctl_sync(dmabuf: DmaBuf, proc: Process, arg: UserArg) -> int:
    """DMA_BUF_IOCTL_SYNC: copy in and check the flags, then begin or end CPU access."""
    flags = arg.copy_from_user(U.dma_buf_sync).flags
    if flags & ~U.DMA_BUF_SYNC_VALID_FLAGS_MASK:
        raise kerr(errno.EINVAL, f"DMA_BUF_IOCTL_SYNC: unknown flags {flags:#x}")
    if not flags & U.DMA_BUF_SYNC_RW:
        raise kerr(errno.EINVAL, "DMA_BUF_IOCTL_SYNC: neither READ nor WRITE")
    direction = flags & U.DMA_BUF_SYNC_RW
    if flags & U.DMA_BUF_SYNC_END:
        dma_buf_end_cpu_access(dmabuf, direction)
    else:
        dma_buf_begin_cpu_access(dmabuf, direction)
    return 0


def strndup_user(arg: UserArg, n: int, what: str) -> str:
    """strndup_user: the NUL-terminated string at ``arg``, at most ``n`` - 1 bytes (EINVAL
    if longer); a Python buffer that ends without a NUL ends the string."""
    raw = b""
    size = arg.length()
    for i in range(n + 1):
        c = arg.read(1, i) if size is None or i < size else b"\0"
        if c == b"\0":
            return raw.decode(errors="replace")
        raw += c
    raise kerr(errno.EINVAL, f"{what}: name longer than {n - 1} bytes (strndup_user)")


@DMA_BUF_IOCTLS.handler(U.DMA_BUF_SET_NAME_A, U.DMA_BUF_SET_NAME_B)
def dma_buf_set_name(dmabuf: DmaBuf, proc: Process, arg: UserArg) -> int:
    """DMA_BUF_SET_NAME: copy the name in, then replace it under name_lock."""
    dmabuf.buf_name = strndup_user(arg, U.DMA_BUF_NAME_LEN, "DMA_BUF_SET_NAME")
    return 0


# The parts of an attachment's location: its mapping state, its pins.
_MAP = (0, 1)
_PINS = (1, 2)


class DmaBufAttachment(track.Tracked):
    """struct dma_buf_attachment. Its mapping state (``mapping`` — the sg table —,
    ``invalidated``, ``pinned_on_map``) and ``pins`` are one tracked location,
    ``<buf>.attach(<dev>)``, accessed plain under the resv lock."""

    def __init__(self, dmabuf: DmaBuf, dev: str, importer_ops: DmaBufAttachOps | None,
                 importer_priv: Any) -> None:
        self.dmabuf = dmabuf
        self.dev = dev
        self.importer_ops = importer_ops
        self.importer_priv = importer_priv
        self.peer2peer = bool(importer_ops and importer_ops.allow_peer2peer)
        self.priv: Any = None  # the exporter's
        self._mapping: DmaMapping | None = None
        self._invalidated = False
        self.pinned_on_map = False
        self._pins = 0
        self.detached = False
        self.mapping_type = "sgt"
        self.track_init(f"{dmabuf.name}.attach({dev})")

    def __repr__(self) -> str:
        return f"<attach {self.dmabuf.name}->{self.dev}>"

    # The mapping state and the pins: plain, the resv lock guards them.
    mapping = Plain[DmaMapping | None](_MAP)
    invalidated = Plain[bool](_MAP)
    pins = Plain[int](_PINS)

    def peek_mapping(self) -> DmaMapping | None:
        """The mapping, read lock-free and marked: for the device (it uses what it was
        programmed with) and the exporter's wait for unmaps (vfio's kref/completion)."""
        track.read_once(self, *_MAP)
        return self._mapping

    @property
    def dynamic(self) -> bool:
        """dma_buf_attachment_is_dynamic: the importer has ops."""
        return self.importer_ops is not None

    # ----- the importer's device doing DMA (physical truth) --------------------------------
    def dma_access(self, offset: int, n: int, write: bool, data: bytes | None = None,
                   job: DmaMapping | None = None) -> bytes:
        """The importing device reads/writes ``n`` bytes at ``offset`` of its mapping.

        ``job``: the mapping a fenced DMA job captured when it was submitted; the exporter
        waits for the job's fence before it frees or moves the memory, so such a job may
        still run after invalidation (KERNEL.md §1, revoke contract step 3).
        """
        sched = self.dmabuf.sched
        # The buffer's memory is the resource: a move or reclaim writes it (see exporters).
        sched.point(f"{self.dmabuf.name}.mem", "w" if write else "r")
        # The device, not the CPU: what it reads of the mapping state (the addresses it was
        # programmed with; the contract's "invalidated" mark) is marked, like its DMA.
        live = self.peek_mapping()
        m = job if job is not None else live
        who = f"dma:{self.dev}"
        if m is None:
            sched.violation("dma-buf-mapping", f"{self.dev} does DMA to {self.dmabuf.name} "
                            "without a mapping")
            return bytes(n)
        if write and self._invalidated and job is None:
            sched.violation("revoke-contract", f"{self.dev} writes {self.dmabuf.name} after "
                            "invalidation, before unmapping")
        out = bytearray()
        pos = 0
        phys = self.dmabuf.kernel.phys
        # The memory itself: hw/physmem's contents are marked and its ownership check is the
        # physical-truth oracle (footprint only), so the DMA is judged there, never as a race.
        for r in m.ranges:
            if offset < pos + r.length and offset + n > pos:
                s = max(offset, pos)
                e = min(offset + n, pos + r.length)
                if write:
                    assert data is not None
                    phys.write(r.phys + (s - pos), data[s - offset : e - offset], who)
                else:
                    out += phys.read(r.phys + (s - pos), e - s, who)
            pos += r.length
        return bytes(out)


# ----- the core API -----------------------------------------------------------------------
def _must_hold(dmabuf: DmaBuf, api: str) -> None:
    dmabuf.resv.assert_held(api)


def _must_not_hold(dmabuf: DmaBuf, api: str) -> None:
    if dmabuf.resv.held():
        dmabuf.sched.violation("dma-buf-locking",
                               f"{api} called with {dmabuf.name}'s resv lock held")


def dma_buf_export(kernel: Kernel, ops: DmaBufOps, size: int, priv: Any,
                   flags: int = L.O_RDWR) -> DmaBuf:
    """dma_buf_export(exp_info): the mandatory ops, pin and unpin together."""
    if priv is None or ops.map_dma_buf is None or ops.unmap_dma_buf is None \
            or ops.release is None:
        raise kerr(errno.EINVAL, "dma_buf_export: priv, map_dma_buf, unmap_dma_buf and "
                   "release are mandatory")
    if (ops.pin is None) != (ops.unpin is None):
        raise kerr(errno.EINVAL, "dma_buf_export: pin and unpin come together or not at all")
    if size <= 0:
        raise kerr(errno.EINVAL, "dma_buf_export: size must be positive")
    if kernel.sched.fault("kzalloc"):
        raise kerr(errno.ENOMEM, "dma_buf_export: allocation failed (injected)")
    buf = DmaBuf(kernel, ops, size, flags, priv)
    kernel.sched.emit("dma_buf", "export", buf=buf.name, exporter=ops.exp_name, size=size)
    return buf


def dma_buf_fd(proc: Process, dmabuf: DmaBuf, flags: int) -> int:
    """dma_buf_fd: install the export's reference in the fd table."""
    return proc.fd_install(dmabuf, bool(flags & L.O_CLOEXEC))


def dma_buf_get(proc: Process, fd: int) -> DmaBuf:
    """dma_buf_get: a reference to the dma-buf behind ``fd`` (EBADF, EINVAL if not one)."""
    f = proc.fget(fd, "dma_buf_get")
    if not isinstance(f, DmaBuf):
        fput(f)
        raise kerr(errno.EINVAL, f"dma_buf_get: fd {fd} is a {f.kind}, not a dma-buf")
    return f


def dma_buf_put(dmabuf: DmaBuf) -> None:
    dmabuf.put()


def dma_buf_attach_revocable(attach: DmaBufAttachment) -> bool:
    """7.1: true when the importer has invalidate_mappings."""
    return bool(attach.importer_ops and attach.importer_ops.invalidate)


def negotiate(dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
    """The three memory models made explicit (KERNEL.md §1). Refuses an incompatible pair
    with the errno the kernel gives where it has the path, EOPNOTSUPP otherwise (documented
    in docs/fidelity.md)."""
    model = dmabuf.ops.memory_model
    imp = attach.importer_ops
    if imp is not None and model not in imp.tolerates:
        raise kerr(errno.EOPNOTSUPP, f"attach: importer {imp.name or attach.dev} does not "
                   f"accept {model} buffers ({dmabuf.exp_name})")
    if imp is None and model == MOVABLE and dmabuf.ops.pin is None:
        raise kerr(errno.EOPNOTSUPP, "attach: a static importer needs a pinnable exporter")


def dma_buf_dynamic_attach(dmabuf: DmaBuf | None, dev: str | None,
                           importer_ops: DmaBufAttachOps | None = None,
                           importer_priv: Any = None) -> DmaBufAttachment:
    """dma_buf_dynamic_attach (and dma_buf_attach with no ops)."""
    if dmabuf is None or dev is None:
        raise kerr(errno.EINVAL, "dma_buf_attach: NULL buffer or device")
    kernel = dmabuf.kernel
    if importer_ops is not None and importer_ops.invalidate is None \
            and kernel.profile.move_notify_mandatory:
        raise kerr(errno.EINVAL, "dma_buf_dynamic_attach: importer ops without move_notify")
    _must_not_hold(dmabuf, "dma_buf_dynamic_attach")
    attach = DmaBufAttachment(dmabuf, dev, importer_ops, importer_priv)
    negotiate(dmabuf, attach)
    if dmabuf.ops.attach is not None:
        dmabuf.ops.attach(dmabuf, attach)
    dmabuf.resv.lock_ctx()
    try:
        dmabuf.attachments.append(attach)
    finally:
        dmabuf.resv.unlock()
    dmabuf.get()  # the attachment holds the buffer (get_file in the importers' paths)
    kernel.track("dma-buf-attachment", +1)
    kernel.sched.emit("dma_buf", "attach", buf=dmabuf.name, dev=dev,
                      dynamic=attach.dynamic, p2p=attach.peer2peer)
    return attach


def dma_buf_mapping_attach(dmabuf: DmaBuf, dev: str, importer_ops: DmaBufAttachOps | None,
                          types: list[str], importer_priv: Any = None) -> DmaBufAttachment:
    """The 2026 mapping-type proposal (not merged): the importer lists the mapping types it
    accepts, best first ("pal" — a physical address list — or "sgt"); the first one the
    exporter offers wins. Behind the profile switch ``dma_buf_mapping_types``."""
    if not dmabuf.kernel.profile.dma_buf_mapping_types:
        raise kerr(errno.EOPNOTSUPP, "dma_buf_mapping_attach: mapping-type negotiation is a "
                   "proposal; this profile does not have it")
    chosen = next((t for t in types if t in dmabuf.ops.mapping_types), None)
    if chosen is None:
        raise kerr(errno.EOPNOTSUPP, f"dma_buf_mapping_attach: {dmabuf.exp_name} offers "
                   f"{list(dmabuf.ops.mapping_types)}, the importer accepts {types}")
    attach = dma_buf_dynamic_attach(dmabuf, dev, importer_ops, importer_priv)
    attach.mapping_type = chosen
    return attach


def dma_buf_attach(dmabuf: DmaBuf | None, dev: str | None) -> DmaBufAttachment:
    return dma_buf_dynamic_attach(dmabuf, dev, None, None)


def dma_buf_detach(dmabuf: DmaBuf, attach: DmaBufAttachment) -> None:
    _must_not_hold(dmabuf, "dma_buf_detach")
    dmabuf.resv.lock_ctx()
    try:
        if attach.mapping is not None:
            dmabuf.sched.violation("dma-buf-lifetime",
                                   f"detach of {attach!r} while still mapped")
        dmabuf.attachments.remove(attach)
    finally:
        dmabuf.resv.unlock()
    if dmabuf.ops.detach is not None:
        dmabuf.ops.detach(dmabuf, attach)
    attach.detached = True
    dmabuf.kernel.track("dma-buf-attachment", -1)
    dmabuf.sched.emit("dma_buf", "detach", buf=dmabuf.name, dev=attach.dev)
    dmabuf.put()


def dma_buf_pin(attach: DmaBufAttachment) -> None:
    buf = attach.dmabuf
    _must_hold(buf, "dma_buf_pin")
    if buf.ops.pin is not None:
        buf.ops.pin(attach)
    attach.pins += 1
    buf.kernel.track("dma-buf-pin", +1)


def _warn_on_zero(buf: DmaBuf, count: int, kind: str, what: str) -> bool:
    """WARN_ON(!count) before an undo: with nothing to undo, a ``kind`` violation and True."""
    if count == 0:
        buf.sched.violation(kind, what)
    return count == 0


def dma_buf_unpin(attach: DmaBufAttachment) -> None:
    buf = attach.dmabuf
    _must_hold(buf, "dma_buf_unpin")
    if _warn_on_zero(buf, attach.pins, "dma-buf-pin", f"unpin of {attach!r} that holds no pin"):
        return
    if buf.ops.unpin is not None:
        buf.ops.unpin(attach)
    attach.pins -= 1
    buf.kernel.track("dma-buf-pin", -1)


def _importer_view(attach: DmaBufAttachment, mapping: DmaMapping) -> DmaMapping:
    """What the importer gets of the exporter's mapping: a physical address list for a "pal"
    attachment (the same ranges by physical address, no DMA mapping); otherwise a DMA-address
    -only sg_table, whose page links are not to be used (scrambled in debug builds) — an
    importer that reaches for them is flagged like lockdep would."""
    buf = attach.dmabuf
    if attach.mapping_type == "pal":
        return DmaMapping([DmaRange(r.phys, r.length, r.phys) for r in mapping.ranges],
                          None, "pal")
    if mapping.sgt is None:

        def flag(msg: str, dev: str = attach.dev) -> None:
            buf.sched.violation("sgt-page-access", f"{dev}: {msg} of {buf.name}")

        dma = segments([(r.dma, r.length) for r in mapping.ranges], MAX_SG_ENT_SZ)
        mapping.sgt = SgTable(dma, pages_valid=False, on_page_access=flag)
    return mapping


def dma_buf_map_attachment(attach: DmaBufAttachment, direction: int = 0) -> DmaMapping:
    """dma_buf_map_attachment: pin-on-map for a static importer of a dynamic exporter; a
    static importer waits for KERNEL fences (pending moves) before the mapping is used."""
    buf = attach.dmabuf
    _must_hold(buf, "dma_buf_map_attachment")
    buf.sched.point(f"{buf.name}.map", "w")
    pinned_here = False
    if buf.dynamic and not attach.dynamic:
        dma_buf_pin(attach)
        pinned_here = True
    assert buf.ops.map_dma_buf is not None  # mandatory (dma_buf_export)
    try:
        mapping = buf.ops.map_dma_buf(attach, direction)
    except OSError:
        if pinned_here:
            dma_buf_unpin(attach)
        raise
    mapping = _importer_view(attach, mapping)
    if not attach.dynamic:
        buf.resv.wait_timeout(DMA_RESV_USAGE_KERNEL)
    attach.mapping = mapping
    attach.pinned_on_map = pinned_here
    attach.invalidated = False
    buf.kernel.track("dma-buf-mapping", +1)
    buf.sched.emit("dma_buf", "map", buf=buf.name, dev=attach.dev, ranges=len(mapping.ranges))
    return mapping


def dma_buf_unmap_attachment(attach: DmaBufAttachment, direction: int = 0) -> None:
    buf = attach.dmabuf
    _must_hold(buf, "dma_buf_unmap_attachment")
    if attach.mapping is None:
        buf.sched.violation("dma-buf-mapping", f"unmap of {attach!r} that is not mapped")
        return
    assert buf.ops.unmap_dma_buf is not None  # mandatory (dma_buf_export)
    buf.ops.unmap_dma_buf(attach, attach.mapping, direction)
    attach.mapping = None
    attach.invalidated = False
    if attach.pinned_on_map:
        attach.pinned_on_map = False
        dma_buf_unpin(attach)
    buf.kernel.track("dma-buf-mapping", -1)
    buf.sched.emit("dma_buf", "unmap", buf=buf.name, dev=attach.dev)
    buf.exporter_wq().wake_up()


def dma_buf_map_attachment_unlocked(attach: DmaBufAttachment, direction: int = 0) -> DmaMapping:
    buf = attach.dmabuf
    _must_not_hold(buf, "dma_buf_map_attachment_unlocked")
    buf.resv.lock_ctx()
    try:
        return dma_buf_map_attachment(attach, direction)
    finally:
        buf.resv.unlock()


def dma_buf_unmap_attachment_unlocked(attach: DmaBufAttachment, direction: int = 0) -> None:
    buf = attach.dmabuf
    _must_not_hold(buf, "dma_buf_unmap_attachment_unlocked")
    buf.resv.lock_ctx()
    try:
        dma_buf_unmap_attachment(attach, direction)
    finally:
        buf.resv.unlock()


def dma_buf_invalidate_mappings(buf: DmaBuf) -> None:
    """dma_buf_move_notify (< 7.1) / dma_buf_invalidate_mappings (7.1): tell every dynamic
    importer its mapping is going away. The resv lock must be held.

    The importer's callback runs with the resv lock held and may finish or wait for DMA in
    flight before it returns (KERNEL.md §1); only once it has returned is a mapping it kept
    invalid for the contract (a write through it is then a ``revoke-contract`` violation, see
    :meth:`DmaBufAttachment.dma_access`). So the mark is set after the callback, and only on
    a mapping the callback left in place."""
    _must_hold(buf, "dma_buf_invalidate_mappings")
    buf.sched.emit("dma_buf", "invalidate", buf=buf.name)
    for a in list(buf.attachments):
        if a.importer_ops is not None and a.importer_ops.invalidate is not None:
            a.importer_ops.invalidate(a)
            if a.mapping is not None:
                a.invalidated = True


dma_buf_move_notify = dma_buf_invalidate_mappings


def dma_buf_vmap(buf: DmaBuf) -> int:
    _must_hold(buf, "dma_buf_vmap")
    if buf.ops.vmap is None:
        raise kerr(errno.EINVAL, f"dma_buf_vmap: {buf.exp_name} has no vmap op")
    addr = int(buf.ops.vmap(buf))
    buf.vmap_count += 1
    return addr


def dma_buf_vunmap(buf: DmaBuf) -> None:
    _must_hold(buf, "dma_buf_vunmap")
    if _warn_on_zero(buf, buf.vmap_count, "dma-buf-lifetime",
                     f"vunmap of {buf.name} that is not vmapped"):
        return
    if buf.ops.vunmap is not None:
        buf.ops.vunmap(buf)
    buf.vmap_count -= 1


def dma_buf_begin_cpu_access(buf: DmaBuf, direction: int) -> None:
    _must_not_hold(buf, "dma_buf_begin_cpu_access")
    if buf.ops.begin_cpu_access is not None:
        buf.ops.begin_cpu_access(buf, direction)


def dma_buf_end_cpu_access(buf: DmaBuf, direction: int) -> None:
    _must_not_hold(buf, "dma_buf_end_cpu_access")
    if buf.ops.end_cpu_access is not None:
        buf.ops.end_cpu_access(buf, direction)


def wait_for_unmaps(buf: DmaBuf, timeout_ns: int) -> bool:
    """The 7.1 revoke step 5: wait (bounded) until no importer still has a mapping.

    Without the resv lock: vfio counts the mappings in a kref and waits on a completion, so
    the condition's reads are marked; an unmap's wake-up orders the exporter after it."""

    def unmapped() -> bool:
        track.read_once(buf.attachments)
        return all(a.peek_mapping() is None for a in list.copy(buf.attachments))

    return buf.exporter_wq().wait_event(unmapped, timeout_ns)


def revoke(buf: DmaBuf, mark: Callable[[], None]) -> None:
    """The exporter side of the revoke contract (KERNEL.md §1, 7.1 profile; 6.19 stops after
    step 4): lock, mark revoked, invalidate, wait for fences, unlock, wait for unmaps."""
    prof = buf.kernel.profile
    buf.resv.lock_ctx()
    try:
        mark()
        dma_buf_invalidate_mappings(buf)
        if prof.revoke_waits_for_unmap:
            buf.resv.wait_timeout(DMA_RESV_USAGE_BOOKKEEP)
    finally:
        buf.resv.unlock()
    if prof.revoke_waits_for_unmap and not wait_for_unmaps(buf, 1_000_000_000):
        buf.sched.emit("dma_buf", "warn", msg="importer has a broken invalidate_mapping()")
        buf.sched.violation("revoke-timeout", f"{buf.name}: an importer did not unmap within "
                            "1 s of invalidation (importer has a broken invalidate_mapping())")
