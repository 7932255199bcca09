"""passthru.kapi — the public API for scenario writers (docs/tutorial.md).

Everything an outside engineer needs to write a scenario against the model, without private
names: the scenario decorator and sandbox, tracked shared state, the sleeping locks, reaching
a kernel object from a file descriptor, writing a dma-buf exporter or importer as a static ops
table plus private data (as ``dma_buf_export(exp_info)`` and ``dma_buf_dynamic_attach(...,
importer_ops, importer_priv)`` take them), device DMA through a mapping, substituting one
kernel function for a patched version within one scenario (:func:`patch`), the lock assertion
kernel code makes (:func:`lockdep_assert_held`), and the names of the seeded bugs a buggy
variant asks for (``@scenario(bugs=(KVM_NO_MMU_INVALIDATE_RETRY,))``).

What it models is what the functions it calls model (kernel/dma_buf/core.py for dma-buf,
drivers/dma-buf/dma-buf.c); this module only gives them stable, typed names. Leaves out:
anything a scenario can do through the uAPI already (use ``s.host`` and passthru.uapi).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .check.scenario import Sandbox, scenario
from .errors import Fault, kerr
from .hw.physmem import Owner

# iommufd (kapi_iommufd.py): mock devices doing DMA through an IOAS, in-kernel accesses.
from .kapi_iommufd import MockDevice as MockDevice
from .kapi_iommufd import access as access
from .kapi_iommufd import dmabuf_fd as dmabuf_fd
from .kapi_iommufd import ioas_alloc as ioas_alloc
from .kapi_iommufd import iommufd_of as iommufd_of
from .kapi_iommufd import map_ram as map_ram
from .kapi_iommufd import mock_domain as mock_domain
from .kapi_iommufd import phys_dma_write as phys_dma_write
from .kapi_tsm import TDI_ERROR_WHILE_ASSIGNED as TDI_ERROR_WHILE_ASSIGNED

# PCI TSM (kapi_tsm.py): connect/bind/unbind a TDISP device to a cVM, private MMIO, guest_req.
from .kapi_tsm import cvm_type as cvm_type
from .kapi_tsm import platform_tsm_of as platform_tsm_of
from .kapi_tsm import tdis_not_in_error as tdis_not_in_error
from .kapi_tsm import tsm_assign as tsm_assign
from .kapi_tsm import tsm_bind as tsm_bind
from .kapi_tsm import tsm_connect as tsm_connect
from .kapi_tsm import tsm_design as tsm_design
from .kapi_tsm import tsm_disconnect as tsm_disconnect
from .kapi_tsm import tsm_guest_accept as tsm_guest_accept
from .kapi_tsm import tsm_guest_req as tsm_guest_req
from .kapi_tsm import tsm_map_private_mmio as tsm_map_private_mmio
from .kapi_tsm import tsm_of as tsm_of
from .kapi_tsm import tsm_owner_bind as tsm_owner_bind
from .kapi_tsm import tsm_owner_unbind as tsm_owner_unbind
from .kapi_tsm import tsm_release as tsm_release
from .kapi_tsm import tsm_unbind as tsm_unbind

# VFIO (kapi_vfio.py): binding functions to vfio-pci, a P2P NIC, BAR exports, BAR reachability.
from .kapi_vfio import PCI_COMMAND_MASTER as PCI_COMMAND_MASTER
from .kapi_vfio import PCI_COMMAND_MEMORY as PCI_COMMAND_MEMORY
from .kapi_vfio import cfg_write as cfg_write
from .kapi_vfio import edu_dma_in_flight as edu_dma_in_flight
from .kapi_vfio import export_bar as export_bar
from .kapi_vfio import hotplug_nic as hotplug_nic
from .kapi_vfio import iommu_reaches_disabled_bar as iommu_reaches_disabled_bar
from .kapi_vfio import mmap_bar as mmap_bar
from .kapi_vfio import nic_of as nic_of
from .kapi_vfio import pci_dev as pci_dev
from .kapi_vfio import set_command as set_command
from .kapi_vfio import sptes_reach_disabled_bar as sptes_reach_disabled_bar
from .kapi_vfio import vfio_device_of as vfio_device_of
from .kapi_vfio import vfio_open as vfio_open
from .kapi_vfio import vfio_pci_bind as vfio_pci_bind
from .kernel.dma_buf import core as _dmabuf
from .kernel.dma_buf import importers as _importers
from .kernel.dma_buf.core import MEMORY_MODELS, MOVABLE, PINNED, REVOCABLE
from .kernel.dma_buf.core import DmaBuf as DmaBuf
from .kernel.dma_buf.core import DmaBufAttachment as Attachment
from .kernel.dma_buf.core import DmaMapping as Mapping
from .kernel.dma_buf.core import DmaRange as DmaRange

# Importers (kernel/dma_buf/importers.py): a generic device (static or dynamic; unmap "sync",
# "work" or "never"; fenced or not), a quiescing device, an RDMA MR, a compositor.
from .kernel.dma_buf.importers import CompositorImporter as CompositorImporter
from .kernel.dma_buf.importers import DeviceImporter as DeviceImporter
from .kernel.dma_buf.importers import QuiescingImporter as QuiescingImporter
from .kernel.dma_buf.importers import RdmaMrImporter as RdmaMrImporter
from .kernel.dma_buf.mock import MockRevocableExporter, mock_dmabuf
from .kernel.dma_buf.movable import MovableExporter
from .kernel.dma_buf.movable import movable_dmabuf as _movable_dmabuf
from .kernel.kvm import invariants as _kvm_invariants
from .kernel.kvm.guest_memfd import GmemFile
from .kernel.kvm.kvm_main import KvmVmFile
from .kernel.lockdep_assert import lockdep_assert_held as lockdep_assert_held
from .kernel.mm import gup as _gup

# Seeded bugs (kernel/profile.py): the names a buggy variant passes as ``@scenario(bugs=...)``.
from .kernel.profile import DMA_BUF_MOVE_PINNED as DMA_BUF_MOVE_PINNED
from .kernel.profile import DMA_BUF_MOVE_SKIPS_FENCE_WAIT as DMA_BUF_MOVE_SKIPS_FENCE_WAIT
from .kernel.profile import IOMMUFD_DETACH_AFTER_FREE as IOMMUFD_DETACH_AFTER_FREE
from .kernel.profile import IOMMUFD_DMABUF_MAP_LOCK_INVERSION as IOMMUFD_DMABUF_MAP_LOCK_INVERSION
from .kernel.profile import IOMMUFD_RELEASE_IGNORES_USERS as IOMMUFD_RELEASE_IGNORES_USERS
from .kernel.profile import IOMMUFD_REVOKE_SKIPS_UNMAP as IOMMUFD_REVOKE_SKIPS_UNMAP
from .kernel.profile import KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC as KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC
from .kernel.profile import KVM_NO_MMU_INVALIDATE_RETRY as KVM_NO_MMU_INVALIDATE_RETRY
from .sim.locks import Completion, Mutex, RwSem, WaitQueue
from .sim.track import Cell, read, read_once, write, write_once

if TYPE_CHECKING:
    from .host.sim import SimHost
    from .kernel.core import Kernel
    from .kernel.fs.file import File

__all__ = [
    "IOMMUFD_DETACH_AFTER_FREE", "IOMMUFD_DMABUF_MAP_LOCK_INVERSION",
    "IOMMUFD_RELEASE_IGNORES_USERS",
    "IOMMUFD_REVOKE_SKIPS_UNMAP", "MockDevice", "access", "dmabuf_fd", "iommufd_of",
    "mock_domain", "phys_dma_write", "ioas_alloc", "map_ram",
    "PCI_COMMAND_MASTER", "PCI_COMMAND_MEMORY", "cfg_write", "edu_dma_in_flight",
    "export_bar", "hotplug_nic", "iommu_reaches_disabled_bar",
    "mmap_bar", "nic_of", "pci_dev", "set_command", "sptes_reach_disabled_bar",
    "vfio_device_of", "vfio_open", "vfio_pci_bind",
    "cvm_type", "platform_tsm_of", "tsm_bind", "tsm_connect", "tsm_disconnect",
    "tsm_guest_accept", "tsm_guest_req", "tsm_map_private_mmio", "tsm_of", "tsm_unbind",
    "TDI_ERROR_WHILE_ASSIGNED", "tdis_not_in_error", "tsm_assign", "tsm_design",
    "tsm_owner_bind", "tsm_owner_unbind", "tsm_release",
    "DMA_BUF_MOVE_PINNED", "DMA_BUF_MOVE_SKIPS_FENCE_WAIT", "KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC",
    "KVM_NO_MMU_INVALIDATE_RETRY", "MEMORY_MODELS", "MOVABLE", "PATCHABLE", "PINNED",
    "REVOCABLE", "Attachment", "Cell",
    "Completion", "CompositorImporter", "DeviceImporter", "DmaBuf", "DmaRange", "ExporterOps",
    "Fault", "ImporterOps", "Mapping", "Mutex", "QuiescingImporter", "RdmaMrImporter", "RwSem",
    "Sandbox", "WaitQueue", "alloc_ram", "attach", "detach", "dma_buf_get",
    "dma_buf_mappings_backed", "dma_read", "dma_write", "dmabuf_of", "export", "file_of",
    "free_ram", "gmem_of", "invalidate_mappings", "kernel_of", "kerr", "kvm_legacy_map",
    "lockdep_assert_held", "map_attachment", "mapping", "migrate_buffer", "movable_dmabuf",
    "patch", "pin_user_pages", "read", "read_once", "reclaim_buffer", "resv_locked",
    "revocable_dmabuf", "revoke", "revoke_buffer", "scenario", "sptes_backed",
    "unmap_attachment",
    "unrevoke_buffer", "vm_of", "write", "write_once",
]


# ----- reaching kernel objects -------------------------------------------------------------


def kernel_of(host: SimHost) -> Kernel:
    """The simulated kernel behind a SimHost (profile, scheduler, physical memory)."""
    return host.kernel


def file_of(host: SimHost, fd: int) -> File:
    """The open file behind ``fd`` in ``host``'s process (EBADF if none), without taking a
    reference: the fd keeps it alive."""
    return host.proc.lookup_fd(fd, "kapi.file_of")


def dmabuf_of(host: SimHost, fd: int) -> DmaBuf:
    """The dma-buf behind ``fd`` (EINVAL if it is another kind of file), without taking a
    reference: the fd keeps it alive."""
    f = file_of(host, fd)
    if not isinstance(f, DmaBuf):
        raise kerr(22, f"kapi.dmabuf_of: fd {fd} is a {f.kind}, not a dma-buf")
    return f


def vm_of(host: SimHost, fd: int) -> Any:
    """The struct kvm behind a VM fd (from KVM_CREATE_VM)."""
    f = file_of(host, fd)
    if not isinstance(f, KvmVmFile):
        raise kerr(22, f"kapi.vm_of: fd {fd} is a {f.kind}, not a KVM VM")
    return f.kvm


def gmem_of(host: SimHost, fd: int) -> Any:
    """The guest_memfd behind ``fd`` (from KVM_CREATE_GUEST_MEMFD)."""
    f = file_of(host, fd)
    if not isinstance(f, GmemFile):
        raise kerr(22, f"kapi.gmem_of: fd {fd} is a {f.kind}, not a guest_memfd")
    return f


# ----- physical memory ---------------------------------------------------------------------


def alloc_ram(host: SimHost, size: int, owner: str) -> list[tuple[int, int]]:
    """Allocate ``size`` bytes of RAM (page-rounded) for ``owner``: extents (start, end)."""
    return host.kernel.phys.alloc(size, Owner(owner))


def free_ram(host: SimHost, extents: list[tuple[int, int]]) -> None:
    """Give RAM back: afterwards any access to it is a physical-truth violation."""
    for s, e in extents:
        host.kernel.phys.release(s, e)


# ----- dma-buf: exporters ------------------------------------------------------------------


@dataclass(frozen=True)
class ExporterOps:
    """A static dma_buf_ops table. Each op gets the exporter's private data first.

    ``map(priv, attach) -> Mapping`` and ``release(priv, buf)`` are mandatory; ``pin`` and
    ``unpin`` come together (a dynamic exporter) or not at all; ``attach`` may refuse an
    importer by raising ``kerr(errno, "why")``. ``memory_model`` is PINNED, REVOCABLE or
    MOVABLE (what importers negotiate against)."""

    map: Callable[[Any, Attachment], Mapping]
    release: Callable[[Any, DmaBuf], None]
    unmap: Callable[[Any, Attachment, Mapping], None] | None = None
    attach: Callable[[Any, DmaBuf, Attachment], None] | None = None
    detach: Callable[[Any, DmaBuf, Attachment], None] | None = None
    pin: Callable[[Any, Attachment], None] | None = None
    unpin: Callable[[Any, Attachment], None] | None = None
    memory_model: str = PINNED
    can_unrevoke: bool = False
    name: str = "exporter"


def _dma_buf_ops(ops: ExporterOps) -> _dmabuf.DmaBufOps:
    """The core's dma_buf_ops for a kapi table: each op calls the table's with the buffer's
    private data (``dmabuf.priv``, what :func:`export` was given) first. Made from the table
    alone: no private data in it."""
    map_, release, unmap = ops.map, ops.release, ops.unmap
    attach_, detach_, pin, unpin = ops.attach, ops.detach, ops.pin, ops.unpin
    return _dmabuf.DmaBufOps(
        map_dma_buf=lambda a, d: map_(a.dmabuf.priv, a),
        unmap_dma_buf=(lambda a, m, d: unmap(a.dmabuf.priv, a, m)) if unmap else (
            lambda a, m, d: None),
        release=lambda b: release(b.priv, b),
        attach=(lambda b, a: attach_(b.priv, b, a)) if attach_ else None,
        detach=(lambda b, a: detach_(b.priv, b, a)) if detach_ else None,
        pin=(lambda a: pin(a.dmabuf.priv, a)) if pin else None,
        unpin=(lambda a: unpin(a.dmabuf.priv, a)) if unpin else None,
        memory_model=ops.memory_model, can_unrevoke=ops.can_unrevoke, exp_name=ops.name)


def export(host: SimHost, ops: ExporterOps, priv: Any, size: int,
           fd_flags: int = 0o2000000) -> int:
    """dma_buf_export + dma_buf_fd: a new dma-buf of ``size`` bytes in ``host``'s process;
    returns its fd (O_CLOEXEC by default)."""
    buf = _dmabuf.dma_buf_export(host.kernel, _dma_buf_ops(ops), size, priv)
    return _dmabuf.dma_buf_fd(host.proc, buf, fd_flags)


def mapping(ranges: list[tuple[int, int, int]]) -> Mapping:
    """What an exporter's ``map`` returns: (dma_address, length, phys) per range — a
    :class:`DmaRange` each, in the kernel's descriptor convention (address, length)."""
    return Mapping([DmaRange._make(r) for r in ranges])


@contextmanager
def resv_locked(buf: DmaBuf) -> Iterator[None]:
    """dma_resv_lock / dma_resv_unlock around a block."""
    buf.resv.lock_ctx()
    try:
        yield
    finally:
        buf.resv.unlock()


def invalidate_mappings(buf: DmaBuf) -> None:
    """Exporter side (resv held): tell every dynamic importer its mapping is going away
    (move_notify, ``invalidate_mappings`` in 7.1)."""
    _dmabuf.dma_buf_invalidate_mappings(buf)


def revoke(buf: DmaBuf, mark: Callable[[], None]) -> None:
    """The revoke contract of the running profile: under the resv lock call ``mark`` (the
    exporter's "revoked" state) and invalidate importers, then wait as the profile says."""
    _dmabuf.revoke(buf, mark)


# ----- dma-buf: importers ------------------------------------------------------------------


@dataclass(frozen=True)
class ImporterOps(_dmabuf.DmaBufAttachOps):
    """A static dma_buf_attach_ops table: the core's own (kernel/dma_buf/core.py), with a
    peer2peer importer and a name by default. ``invalidate(attach)`` is called with the resv
    lock held when the exporter moves or revokes the buffer (None: no callback, which attach
    refuses before 7.1). The importer's private data travels as ``attach.importer_priv``."""

    allow_peer2peer: bool = True
    tolerates: frozenset[str] = field(default_factory=lambda: frozenset(MEMORY_MODELS))
    name: str = "importer"


def attach(buf: DmaBuf, dev: str, ops: ImporterOps | None, priv: Any = None) -> Attachment:
    """dma_buf_dynamic_attach (``ops`` None: dma_buf_attach, a static importer)."""
    if ops is None:
        return _dmabuf.dma_buf_attach(buf, dev)
    return _dmabuf.dma_buf_dynamic_attach(buf, dev, ops, priv)


def detach(attach: Attachment) -> None:
    _dmabuf.dma_buf_detach(attach.dmabuf, attach)


def map_attachment(attach: Attachment) -> Mapping:
    """dma_buf_map_attachment: the caller holds the resv lock (see :func:`resv_locked`)."""
    return _dmabuf.dma_buf_map_attachment(attach)


def unmap_attachment(attach: Attachment) -> None:
    """dma_buf_unmap_attachment: the caller holds the resv lock."""
    _dmabuf.dma_buf_unmap_attachment(attach)


def dma_read(attach: Attachment, offset: int, n: int) -> bytes:
    """The importing device reads through its current mapping (judged by physical truth
    and the revoke contract)."""
    return attach.dma_access(offset, n, write=False)


def dma_write(attach: Attachment, offset: int, data: bytes) -> None:
    """The importing device writes through its current mapping."""
    attach.dma_access(offset, len(data), write=True, data=data)


# ----- the model's own drivers: ready-made exporters and importers --------------------------


def revocable_dmabuf(host: SimHost, size: int, require_p2p: bool = True) -> DmaBuf:
    """A RAM-backed revocable dma-buf, like the iommufd selftest's mock and vfio-pci's BAR
    export (kernel/dma_buf/mock.py); the exporter side acts through :func:`revoke_buffer`,
    :func:`unrevoke_buffer` and :func:`reclaim_buffer`."""
    return mock_dmabuf(host.kernel, size, require_p2p=require_p2p)


def movable_dmabuf(host: SimHost, size: int, placement: str = "vram") -> DmaBuf:
    """A GPU-style buffer TTM may move between VRAM and system memory
    (kernel/dma_buf/movable.py); the exporter moves it with :func:`migrate_buffer`."""
    return _movable_dmabuf(host.kernel, size, placement)


def _revocable(buf: DmaBuf) -> MockRevocableExporter:
    if not isinstance(buf.priv, MockRevocableExporter):
        raise TypeError(f"{buf.name} is exported by {buf.exp_name}, not the revocable exporter")
    return buf.priv


def _movable(buf: DmaBuf) -> MovableExporter:
    if not isinstance(buf.priv, MovableExporter):
        raise TypeError(f"{buf.name} is exported by {buf.exp_name}, not the movable exporter")
    return buf.priv


def revoke_buffer(buf: DmaBuf) -> None:
    """The revocable exporter revokes (a device reset, a BAR going away)."""
    _revocable(buf).revoke(buf)


def unrevoke_buffer(buf: DmaBuf) -> None:
    _revocable(buf).unrevoke(buf)


def reclaim_buffer(buf: DmaBuf) -> None:
    """The revocable exporter gives the memory back: any later importer access is a
    physical-truth violation."""
    _revocable(buf).reclaim()


def migrate_buffer(buf: DmaBuf, to: str) -> None:
    """The movable exporter moves the buffer (``to``: "vram" or "system")."""
    _movable(buf).migrate(buf, to)


def dma_buf_get(host: SimHost, fd: int) -> DmaBuf:
    """dma_buf_get: a reference to the dma-buf behind ``fd``; drop it with ``buf.put()``."""
    return _dmabuf.dma_buf_get(host.proc, fd)


def pin_user_pages(host: SimHost, addr: int, length: int, write: bool = True) -> Any:
    """pin_user_pages(FOLL_LONGTERM) of ``host``'s memory; ``.unpin()`` the result."""
    return _gup.pin_user_pages(host.proc.mm, addr, length, write=write)


def kvm_legacy_map(host: SimHost, fd: int, length: int) -> int:
    """The pre-dma-buf KVM route: mmap the buffer and GUP it (EFAULT on special PTEs)."""
    return _importers.kvm_legacy_map(host.proc, fd, length)


def dma_buf_mappings_backed(host: SimHost) -> str | None:
    """Invariant: every dma-buf mapping still points at memory its exporter owns (the
    kernel's registered ``dma-buf-mapping-backed``, kernel/dma_buf/invariants.py)."""
    return host.kernel.invariant("dma-buf-mapping-backed")()


def sptes_backed(host: SimHost, *vm_fds: int) -> Callable[[], str | None]:
    """Invariant over the VMs behind ``vm_fds``: every SPTE maps memory still allocated
    (kernel/kvm/invariants.py). Use as ``s.invariant("stale-spte", sptes_backed(h, vm))``."""
    return _kvm_invariants.sptes_backed(host.kernel.phys, [vm_of(host, fd) for fd in vm_fds])


# ----- patching one kernel function --------------------------------------------------------

# The kernel functions a scenario may substitute, by their kernel names: where callers look
# them up (module, attribute). A patch lasts for one run of the scenario.
PATCHABLE: dict[str, tuple[str, str]] = {
    "dma_buf_invalidate_mappings": ("passthru.kernel.dma_buf.core",
                                    "dma_buf_invalidate_mappings"),
    "dma_buf_map_attachment": ("passthru.kernel.dma_buf.core", "dma_buf_map_attachment"),
    "dma_buf_unmap_attachment": ("passthru.kernel.dma_buf.core", "dma_buf_unmap_attachment"),
    "dma_buf_revoke": ("passthru.kernel.dma_buf.core", "revoke"),
    "wait_for_unmaps": ("passthru.kernel.dma_buf.core", "wait_for_unmaps"),
    # KVM's MMU (methods of the model's struct kvm_mmu stand-in, patched on the class)
    "kvm_mmu_invalidate_begin": ("passthru.kernel.kvm.mmu", "KvmMmu.invalidate_begin"),
    "kvm_mmu_invalidate_end": ("passthru.kernel.kvm.mmu", "KvmMmu.invalidate_end"),
    "mmu_invalidate_retry_gfn": ("passthru.kernel.kvm.mmu", "KvmMmu.retry"),
    "kvm_tdp_mmu_map": ("passthru.kernel.kvm.mmu", "KvmMmu.install"),
    "kvm_mmu_notifier_invalidate_range_start": ("passthru.kernel.kvm.mmu",
                                                "KvmMmu.hva_invalidate"),
}


def patch(s: Sandbox, name: str, replacement: Callable[..., Any]) -> Callable[..., Any]:
    """Substitute the kernel function ``name`` (a key of :data:`PATCHABLE`) with
    ``replacement`` for this run of the scenario; returns the original, so a patch can wrap
    it. "Does my patch break anything?": run the scenario with and without it."""
    if name not in PATCHABLE:
        raise KeyError(f"{name!r} is not patchable; known: {', '.join(sorted(PATCHABLE))}")
    modname, attr = PATCHABLE[name]
    target: Any = importlib.import_module(modname)
    *owners, attr = attr.split(".")
    for o in owners:  # "Class.method": patch the method on its class
        target = getattr(target, o)
    original: Callable[..., Any] = s.patch(target, attr, replacement)
    return original
