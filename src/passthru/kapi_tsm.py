"""passthru.kapi's PCI TSM part: connect, bind and unbind a TDISP device to a confidential VM
through the TSM core (kernel/pci/tsm/core.py) and the profile's platform TSM driver
(kernel/pci/tsm/platform.py: TDX Connect, SEV-TIO or CCA), re-exported by passthru.kapi.

There is no uAPI for these yet (the proposed iommufd/VFIO/KVM ones are issue 13 §4,
passthru.uapi.proposed): a scenario or test calls the kernel's entry points directly, as a
design's in-kernel caller would —

- :func:`cvm_type` — the KVM VM type the profile's platform binds TDIs to (TDX 5, SNP 4, the
  CCA stand-in SW_PROTECTED 1);
- :func:`tsm_connect` / :func:`tsm_disconnect` — sysfs ``tsm/connect`` / ``disconnect``;
- :func:`tsm_bind` / :func:`tsm_unbind` — pci_tsm_bind / pci_tsm_unbind with the VM behind a
  KVM VM fd;
- :func:`tsm_map_private_mmio` — KVM's private-MMIO fault (stand-in): the locked TEE MMIO into
  the cVM's secure stage-2 at a guest address;
- :func:`tsm_guest_req` / :func:`tsm_guest_accept` — a guest request (a TDISP message) and the
  guest's accept (STATE_CHANGE START_INTERFACE);
- :func:`tsm_of` / :func:`platform_tsm_of` — the core and the driver, for inspection;
- the coordination designs (kernel/pci/tsm/designs.py): :func:`tsm_design` (the profile's
  row), :func:`tsm_owner_bind` / :func:`tsm_owner_unbind` (an owner's bind — VFIO's, the
  iommufd vDEVICE's or the VMM's — ENOTTY for a component the design gives none),
  :func:`tsm_assign` (connect, bind through the design's owner, map the private MMIO, the
  guest's accept) and :func:`tsm_release` (the owner's unbind);
  :func:`tdis_not_in_error` is the ``tdi-error-while-assigned`` invariant.

Locking: each call takes what the kernel's entry takes (pci_tsm_rwsem, the PF0 lock); callable
from any task. Leaves out: sysfs as files, the guest's own TDISP requester.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .errors import kerr
from .hw import tdisp
from .kernel.kvm.kvm_main import KvmVmFile
from .kernel.pci.tsm.core import PCI_TSM_REQ_STATE_CHANGE, PciTsmCore, pci_tsm
from .kernel.pci.tsm.designs import Design, design_of
from .kernel.pci.tsm.designs import tsm_owner_bind as _owner_bind
from .kernel.pci.tsm.designs import tsm_owner_unbind as _owner_unbind
from .kernel.pci.tsm.invariants import TDI_ERROR_WHILE_ASSIGNED as TDI_ERROR_WHILE_ASSIGNED
from .kernel.pci.tsm.invariants import tdis_not_in_error as tdis_not_in_error
from .kernel.pci.tsm.platform import MmioMap, PlatformTsm, platform_tsm
from .kernel.vfio.pci.vfio_pci import pci_devices

if TYPE_CHECKING:
    from .host.sim import SimHost
    from .hw.pcidev import PciDevice
    from .kernel.kvm.kvm_main import Kvm


def tsm_of(host: SimHost) -> PciTsmCore:
    """The TSM core of ``host``'s kernel."""
    return pci_tsm(host.kernel)


def platform_tsm_of(host: SimHost) -> PlatformTsm:
    """The platform TSM driver (ENODEV on a profile without a coco platform)."""
    drv = platform_tsm(host.kernel)
    if drv is None:
        raise kerr(errno.ENODEV, f"profile {host.kernel.profile.name} has no platform TSM "
                   "(coco_platform)")
    return drv


def cvm_type(host: SimHost) -> int:
    """The KVM VM type this profile's platform TSM binds TDIs to."""
    return platform_tsm_of(host).CVM_TYPES[0]


def _dev(host: SimHost, name: str) -> PciDevice:
    d = pci_devices(host.kernel).get(name)
    if d is None:
        raise kerr(errno.ENODEV, f"tsm: no PCI device {name}")
    return d


def _kvm(host: SimHost, vm_fd: int | None) -> Kvm | None:
    if vm_fd is None:
        return None
    f = host.proc.lookup_fd(vm_fd, "kapi.tsm_bind")
    if not isinstance(f, KvmVmFile):
        raise kerr(errno.EINVAL, f"tsm_bind: fd {vm_fd} is a {f.kind}, not a KVM VM")
    return f.kvm


def tsm_connect(host: SimHost, dev: str, tsm: str = "tsm0") -> None:
    tsm_of(host).connect(_dev(host, dev), tsm)


def tsm_disconnect(host: SimHost, dev: str, tsm: str = "tsm0") -> None:
    tsm_of(host).disconnect(_dev(host, dev), tsm)


def tsm_bind(host: SimHost, dev: str, vm_fd: int | None, tdi_id: int) -> int:
    """pci_tsm_bind of ``dev`` to the VM behind ``vm_fd`` (None: a NULL kvm)."""
    return tsm_of(host).bind(_dev(host, dev), _kvm(host, vm_fd), tdi_id)


def tsm_unbind(host: SimHost, dev: str) -> None:
    tsm_of(host).unbind(_dev(host, dev))


def tsm_map_private_mmio(host: SimHost, dev: str, gpa: int) -> list[MmioMap]:
    return platform_tsm_of(host).map_private_mmio(_dev(host, dev), gpa)


def tsm_guest_req(host: SimHost, dev: str, scope: int,
                  req: tdisp.Message | bytes) -> tdisp.Message:
    raw = tdisp.encode(req) if isinstance(req, tdisp.Message) else bytes(req)
    return tdisp.decode(tsm_of(host).guest_req(_dev(host, dev), scope, raw))


def tsm_guest_accept(host: SimHost, dev: str) -> tdisp.Message:
    """The guest accepts the TDI: STATE_CHANGE START_INTERFACE (RUN)."""
    d = _dev(host, dev)
    fid = d.tdi.function_id if d.tdi is not None else 0
    return tsm_guest_req(host, dev, PCI_TSM_REQ_STATE_CHANGE, tdisp.StartInterface(fid))


# ----- the coordination designs (kernel/pci/tsm/designs.py) ---------------------------------
def tsm_design(host: SimHost) -> Design:
    """The profile's coordination design: who binds, who is told before an FLR."""
    return design_of(host.kernel)


def tsm_owner_bind(host: SimHost, owner: str, dev: str, vm_fd: int, tdi_id: int,
                   handle: int | None = None) -> int:
    """``owner``'s TSM bind of ``dev`` to the VM behind ``vm_fd`` (ENOTTY if the design
    gives ``owner`` none)."""
    return _owner_bind(host.kernel, owner, _dev(host, dev), _kvm(host, vm_fd), tdi_id, handle)


def tsm_owner_unbind(host: SimHost, owner: str, dev: str) -> None:
    _owner_unbind(host.kernel, owner, _dev(host, dev))


def tsm_assign(host: SimHost, dev: str, vm_fd: int, tdi_id: int, gpa: int,
               accept: bool = True) -> list[MmioMap]:
    """Assign ``dev`` to the cVM behind ``vm_fd`` as the design wants it: connect (when not
    yet), bind through the design's owner, map the private MMIO at ``gpa`` and (``accept``)
    the guest's accept (RUN). The maps."""
    d = _dev(host, dev)
    if tsm_of(host).connected(d) is None:
        tsm_connect(host, dev)
    tsm_owner_bind(host, tsm_design(host).bind_owner, dev, vm_fd, tdi_id)
    maps = tsm_map_private_mmio(host, dev, gpa)
    if accept:
        tsm_guest_accept(host, dev)
    return maps


def tsm_release(host: SimHost, dev: str) -> None:
    """The design's owner unbinds ``dev``'s TDI (what it bound; nothing otherwise)."""
    tsm_owner_unbind(host, tsm_design(host).bind_owner, dev)
