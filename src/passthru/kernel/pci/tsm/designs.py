"""The coordination designs for confidential device assignment (issue 13 §5; KERNEL.md §6,
the seeds' (a)-(c)) as data the kernel reads — who owns TSM bind and the private MMIO, and
who must be told before VFIO resets the device or changes its decoding — and the one hook
through which VFIO tells them: the *TSM notifier* (:func:`pci_tsm_notify`).

None of this is merged or settled; the table follows the seeds' three positions:

========  ===========  ===========  =====================================  ==============
design    binds        MMIO buffer  told before flr/mse-clear/bme-clear/   who unbinds
                                    d3hot/close
========  ===========  ===========  =====================================  ==============
vfio      vfio         vfio         every event                            vfio (itself)
iommufd   iommufd      vfio         every event                            iommufd (the
          (vDEVICE)                                                        vDEVICE owner)
vmm       vmm          vmm          nothing                                nobody: the VMM
                                                                           unbinds first
========  ===========  ===========  =====================================  ==============

(:data:`COORDINATION`; ``Profile.design`` names the row.) Nothing else asks which design runs:
VFIO calls :func:`pci_tsm_notify` at each event with ``memory_lock`` held for write, *before*
it zaps the BARs, revokes its dma-bufs or touches the hardware (TDX Connect: TSM unbind must
precede the MSE clear and the zap, else the TDI goes to ERROR); the notifier looks the event
up in the row and, when the row's ``unbinder`` is told, has it unbind the TDIs *it* bound —
through the PCI TSM core, so the platform's unbind order (TDX: STOP, S-EPT unmap, DMAR, DEVIF
remove) runs before the hardware sees the event. A TDI bound by someone else (or behind the
owner's back, through the core directly) is not the owner's to unbind: it is left bound, and
the event puts it in ERROR (invariants.py: ``tdi-error-while-assigned``).

Bind goes through the owner (:func:`tsm_owner_bind`): the row's ``bind_owner`` only — another
component has no such entry point in that design (ENOTTY, invented: the proposed uAPIs of
issue 13 §4 are not in the model; each owner's bind stands for its ioctl: a VFIO device
feature in design vfio, the iommufd vDEVICE TSM op in design iommufd, a TSM/KVM uAPI the VMM
calls in design vmm). :func:`tsm_owner_unbind` is the owner's unbind (the same ioctl's
counterpart, or the owner's fd release).

Events: ``flr`` (VFIO_DEVICE_RESET, a virtual DEVCTL BCR_FLR), ``mse-clear`` and ``bme-clear``
(a COMMAND write clearing MEMORY or MASTER on the hardware), ``d3hot`` (a PMCSR write to
D3hot), ``close`` (vfio_pci_core_close_device, which resets the device).

Shared state (tracked): ``bindings`` (which owner bound each function's TDI:
:class:`Binding`, immutable records) — written and read under the lock of the design's bind
owner (one Mutex per owner, asserted in :meth:`TsmOwners._set` and the notifier). Lock order:
VFIO's ``memory_lock`` (write) → the owner's lock → ``pci_tsm_rwsem`` → the PF0 lock; the
owner's bind/unbind take the last three in the same order.

Events (``tsm``): ``notify`` (dev, on — the event —, design, unbinder, bound) at each
notifier call on a machine with a platform TSM; ``owner-bind``/``owner-unbind`` (dev, owner, why).

*Invented* (the RFCs are silent or disagree): the owners' lock classes, the ENOTTY, the event
set, that iommufd's vDEVICE stands as a binding record carrying its id (the vDEVICE object of
kernel/iommu/iommufd/viommu.py needs a vIOMMU driver the platform IOMMU does not model yet),
that the notifier runs under ``memory_lock``. Leaves out: hot reset (pci_hot_reset.py is not
hooked), runtime low-power entry (the model does not move the device to D3hot there), the
variant in which iommufd creates the private-MMIO dma-buf, and the set-up timings (secure
vIOMMU before boot vs late bind).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ....errors import kerr
from ....sim.locks import Mutex
from ....sim.track import TrackedDict
from ...init import kernel_static
from ...lockdep_assert import lockdep_assert_held
from ...profile import DESIGNS
from .core import pci_tsm

if TYPE_CHECKING:
    from ....hw.pcidev import PciDevice
    from ...core import Kernel
    from ...kvm.kvm_main import Kvm

FLR, MSE_CLEAR, BME_CLEAR, D3HOT, CLOSE = "flr", "mse-clear", "bme-clear", "d3hot", "close"
EVENTS = (FLR, MSE_CLEAR, BME_CLEAR, D3HOT, CLOSE)
OWNERS = ("vfio", "iommufd", "vmm")
# each owner's lock class (invented names for the proposals' locks)
OWNER_LOCK_CLASS = {"vfio": "vfio_pci_core_device->tsm_lock",
                    "iommufd": "iommufd_vdevice->mutex",
                    "vmm": "tsm_uapi->lock"}


@dataclass(frozen=True)
class Design:
    """One coordination design: who binds (``bind_owner``), who exports the private-MMIO
    buffer (``mmio_owner``; descriptive: the buffer is stood in for by
    PlatformTsm.map_private_mmio), which events the kernel tells (``told``) and to whom
    (``unbinder``: None — nobody is told; the VMM must unbind before it resets)."""

    name: str
    bind_owner: str
    mmio_owner: str
    told: frozenset[str]
    unbinder: str | None
    doc: str

    @property
    def vmm_orders(self) -> bool:
        """Must the VMM unbind before an FLR, an MSE change or closing the device?"""
        return self.unbinder is None


COORDINATION: dict[str, Design] = {d.name: d for d in (
    Design("vfio", bind_owner="vfio", mmio_owner="vfio", told=frozenset(EVENTS),
           unbinder="vfio", doc="(a) VFIO owns bind and the MMIO buffer; it unbinds the TDI "
           "itself before it resets the device or changes its decoding"),
    Design("iommufd", bind_owner="iommufd", mmio_owner="vfio", told=frozenset(EVENTS),
           unbinder="iommufd", doc="(b) iommufd owns bind, against the vDEVICE; VFIO "
           "notifies it before any FLR, MSE/BME clear, D3hot or close, and it unbinds"),
    Design("vmm", bind_owner="vmm", mmio_owner="vmm", told=frozenset(), unbinder=None,
           doc="(c) the VMM orders everything: the kernel tells nobody; the VMM unbinds "
           "before it asks for an FLR or forwards a decode change"),
)}
if tuple(COORDINATION) != DESIGNS:  # the profile's names and this table must agree
    raise ImportError(f"designs.py: COORDINATION {tuple(COORDINATION)} != DESIGNS {DESIGNS}")


def design_of(kernel: Kernel) -> Design:
    return COORDINATION[kernel.profile.design]


def notifier_active(kernel: Kernel) -> bool:
    """Has this machine a platform TSM (else nothing is ever bound: VFIO skips the hook,
    so machines without one run exactly as before)."""
    return kernel.profile.coco_platform is not None


@dataclass(frozen=True)
class Binding:
    """``dev``'s TDI bound by ``owner`` to ``kvm`` as ``tdi_id``; ``handle`` is the owner's
    object (the vDEVICE id in design iommufd, else None)."""

    dev: str
    owner: str
    kvm: str
    tdi_id: int
    handle: int | None = None


class TsmOwners:
    """Who bound what (see the module docstring for the locks)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.locks = {o: Mutex(kernel.sched, f"tsm_owner.{o}.lock", OWNER_LOCK_CLASS[o])
                      for o in OWNERS}
        self.bindings: TrackedDict[str, Binding] = TrackedDict(label="tsm_owner.bindings")

    def lock(self, owner: str) -> Mutex:
        return self.locks[owner]

    def _set(self, dev: str, b: Binding | None, what: str) -> None:
        lockdep_assert_held(self.locks[design_of(self.kernel).bind_owner], what)
        if b is None:
            self.bindings.pop(dev, None)
        else:
            self.bindings[dev] = b


tsm_owners = kernel_static("pci.tsm.owners", TsmOwners)


def _check_owner(kernel: Kernel, owner: str, what: str) -> Design:
    d = design_of(kernel)
    if owner != d.bind_owner:
        raise kerr(errno.ENOTTY, f"{what}: design {d.name}: TSM bind belongs to "
                   f"{d.bind_owner}, {owner} has no TSM bind")
    return d


def tsm_owner_bind(kernel: Kernel, owner: str, pdev: PciDevice, kvm: Kvm | None,
                   tdi_id: int, handle: int | None = None) -> int:
    """``owner``'s TSM bind (its proposed ioctl): pci_tsm_bind under the owner's lock, and
    the binding recorded. ENOTTY when the design gives ``owner`` no bind; the core's errnos."""
    what = f"{owner} tsm bind {pdev.name}"
    _check_owner(kernel, owner, what)
    owners = tsm_owners(kernel)
    with owners.lock(owner):
        ret = pci_tsm(kernel).bind(pdev, kvm, tdi_id)
        assert kvm is not None  # the core refused a NULL kvm
        owners._set(pdev.name, Binding(pdev.name, owner, kvm.name, tdi_id, handle), what)
        kernel.sched.emit("tsm", "owner-bind", dev=pdev.name, owner=owner, kvm=kvm.name)
    return ret


def _owner_unbind(kernel: Kernel, owner: str, pdev: PciDevice, why: str) -> bool:
    """Unbind ``pdev``'s TDI if ``owner`` bound it (the owner's lock held); True if it did."""
    owners = tsm_owners(kernel)
    lockdep_assert_held(owners.lock(owner), f"{owner} tsm unbind")
    b = owners.bindings.get(pdev.name)
    if b is None or b.owner != owner:
        return False
    pci_tsm(kernel).unbind(pdev)
    owners._set(pdev.name, None, f"{owner} tsm unbind")
    kernel.sched.emit("tsm", "owner-unbind", dev=pdev.name, owner=owner, why=why)
    return True


def tsm_owner_unbind(kernel: Kernel, owner: str, pdev: PciDevice) -> None:
    """``owner``'s TSM unbind (its ioctl, or its fd's release): ENOTTY when the design gives
    ``owner`` no bind; nothing bound by ``owner``: nothing happens."""
    _check_owner(kernel, owner, f"{owner} tsm unbind {pdev.name}")
    with tsm_owners(kernel).lock(owner):
        _owner_unbind(kernel, owner, pdev, "request")


def pci_tsm_notify(kernel: Kernel, pdev: PciDevice, event: str) -> None:
    """The TSM notifier: VFIO is about to do ``event`` to ``pdev`` (memory_lock held for
    write: the caller asserts it). The design's unbinder, if it is told of ``event``,
    unbinds the TDI it bound before VFIO goes on."""
    if event not in EVENTS:
        raise ValueError(f"pci_tsm_notify: unknown event {event!r} (known: {EVENTS})")
    if not notifier_active(kernel):
        return
    d = design_of(kernel)
    if d.unbinder is None or event not in d.told:
        kernel.sched.emit("tsm", "notify", dev=pdev.name, on=event, design=d.name,
                          unbinder="nobody", bound="?")
        return
    with tsm_owners(kernel).lock(d.unbinder):
        done = _owner_unbind(kernel, d.unbinder, pdev, event)
        kernel.sched.emit("tsm", "notify", dev=pdev.name, on=event, design=d.name,
                          unbinder=d.unbinder, bound=done)
