"""Confidential device assignment under the three coordination designs (issue 13 §5, §7;
KERNEL.md §6): the GPU (TDISP-capable, gpu0) is assigned to a TDX VM — vfio-pci open through
iommufd, the TSM connected, its TDI bound *through the design's owner*, its private MMIO in
the Secure EPT, accepted by the guest (RUN) — and then the host does something that puts a
locked TDI in ERROR unless the TSM unbinds it first, while a vCPU reads its private MMIO.

Every scenario checks ``tdi-error-while-assigned`` (kernel/pci/tsm/invariants.py: a TDI the
TSM holds bound is in ERROR, its private MMIO still in the S-EPT) after each step, and runs
under each design (kernel/pci/tsm/designs.py), whose expected verdict it declares:

- ``tsm_flr_while_bound``: the VMM asks VFIO for a reset (VFIO_DEVICE_RESET) without
  unbinding first — as QEMU does on a guest-initiated reset today. Design vfio: VFIO's TSM
  notifier unbinds its own TDI (TDX order: STOP, S-EPT unmap, DMAR, DEVIF remove) under
  memory_lock before it disables decoding and resets: safe. Design iommufd: VFIO notifies
  iommufd, which unbinds what its vDEVICE bound: safe. Design vmm: the kernel tells nobody;
  vfio_pci_core clears MSE on the way to the FLR, the TDI goes to ERROR while bound:
  violation.
- ``tsm_guest_mse_clear_while_bound``: the guest clears COMMAND.MEMORY and the VMM forwards
  the write to VFIO's config region. Same verdicts, same reasons (the notifier's
  ``mse-clear``).
- ``tsm_flr_vmm_ordered``: the VMM's reset flow follows the design (``Design.vmm_orders``:
  unbind through the owner first when the kernel will not): safe under all three — design
  vmm is safe exactly when every VMM path orders it.
- ``tsm_unbind_vs_guest_mmio``: the VMM unbinds through the design's owner (a private →
  shared conversion or hot unplug starting) while the vCPU reads its private MMIO: safe under
  all three — the TDX order (STOP first) makes the device refuse the guest's T=1 load from
  then on, and the MMIO goes back to the host only after DEVIF.REMOVE.

In every design the cVM loses the device at the reset (it is unbound, not recovered: the
guest must re-accept after a new bind); what differs is whether the host breaks it behind the
TSM's back. At the end the VMM releases what the design leaves to it and exits.

Exploration stays small: two tasks, the reset or config write (with the whole TDX unbind in
it) and one vCPU TEE read of BAR0.
"""

from __future__ import annotations

from ..kapi import (
    PCI_COMMAND_MEMORY,
    TDI_ERROR_WHILE_ASSIGNED,
    Sandbox,
    cvm_type,
    ioas_alloc,
    pci_dev,
    scenario,
    set_command,
    tdis_not_in_error,
    tsm_assign,
    tsm_design,
    tsm_release,
    vfio_open,
    vfio_pci_bind,
)
from ..uapi import kvm as K
from ..uapi import linux as L
from ..uapi import vfio as V

PROFILES = ("rfc-tdx-connect",)
GPU = "gpu0"
TDI_ID = 0x10
GPA = 1 << 32  # where the guest sees BAR0's private MMIO
# design -> expected verdict, for a VMM that does not order the unbind itself
UNORDERED = {"vfio": "safe", "iommufd": "safe", "vmm": "violation"}
ORDERED = {"vfio": "safe", "iommufd": "safe", "vmm": "safe"}


def _assigned(s: Sandbox) -> int:
    """The GPU open through VFIO and assigned to a TDX VM as the design wants it; the
    invariant and the VMM's exit armed. The VFIO device fd."""
    host = s.host
    ifd, ioas = ioas_alloc(host)
    gfd = vfio_open(host, vfio_pci_bind(host, GPU), ifd, ioas)
    kvm = host.open("/dev/kvm", L.O_RDWR | L.O_CLOEXEC)
    vm = host.ioctl(kvm, K.KVM_CREATE_VM, cvm_type(host))
    # The VMM exits: where the design leaves unbinding to it, it releases first (a TDI left
    # in ERROR by then is recovered: STOP leaves ERROR). Armed before the bind, so a set-up
    # failed by an injected fault after it still unbinds.
    s.final("vmm-exit", lambda: _release_if_vmm_orders(s))
    tsm_assign(host, GPU, vm, TDI_ID, GPA)
    s.invariant(TDI_ERROR_WHILE_ASSIGNED, tdis_not_in_error(host.kernel))
    return gfd


def _release_if_vmm_orders(s: Sandbox) -> None:
    if tsm_design(s.host).vmm_orders:
        tsm_release(s.host, GPU)


def _vcpu_reads_private_mmio(s: Sandbox) -> None:
    """The guest's load from its private MMIO (T=1 through the S-EPT): served in RUN,
    refused by the device otherwise (logged; the guest sees all ones)."""
    pci_dev(s.host, GPU).mmio_read(0, 0, 4, who="tee:vcpu0")


def _spawn_vcpu(s: Sandbox) -> None:
    s.spawn("vcpu0", _vcpu_reads_private_mmio, s)


@scenario(profiles=PROFILES, expect=UNORDERED)
def tsm_flr_while_bound(s: Sandbox) -> None:
    """VFIO_DEVICE_RESET of a GPU whose TDI is bound and running, the VMM not unbinding first:
    safe where VFIO tells the TSM's owner (designs vfio, iommufd), a TDI in ERROR under vmm."""
    gfd = _assigned(s)
    _spawn_vcpu(s)
    s.spawn("reset", s.host.ioctl, gfd, V.VFIO_DEVICE_RESET, 0)


@scenario(profiles=PROFILES, expect=UNORDERED)
def tsm_guest_mse_clear_while_bound(s: Sandbox) -> None:
    """The guest clears MSE of its bound, running GPU and the VMM forwards the config write to
    VFIO: safe where VFIO tells the TSM's owner first, a TDI in ERROR under vmm."""
    gfd = _assigned(s)
    _spawn_vcpu(s)
    s.spawn("guest-cfg", set_command, s.host, gfd, PCI_COMMAND_MEMORY, False)


def _vmm_reset(s: Sandbox, gfd: int) -> None:
    """The VMM's reset flow, as the design asks of it: unbind first when the kernel won't."""
    if tsm_design(s.host).vmm_orders:
        tsm_release(s.host, GPU)
    s.host.ioctl(gfd, V.VFIO_DEVICE_RESET, 0)


@scenario(profiles=PROFILES, expect=ORDERED)
def tsm_flr_vmm_ordered(s: Sandbox) -> None:
    """A VMM whose reset flow unbinds first where the design leaves it to the VMM: safe under
    every design."""
    gfd = _assigned(s)
    _spawn_vcpu(s)
    s.spawn("reset", _vmm_reset, s, gfd)


@scenario(profiles=PROFILES, expect=ORDERED)
def tsm_unbind_vs_guest_mmio(s: Sandbox) -> None:
    """The owner's unbind racing the guest's load from its private MMIO: safe under every
    design (STOP before the S-EPT unmap; the MMIO the host's only after reclaim)."""
    _assigned(s)
    _spawn_vcpu(s)
    s.spawn("unbind", tsm_release, s.host, GPU)
