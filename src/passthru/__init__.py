"""passthru: an executable model of the Linux host stack through which devices and VMs share
memory (dma-buf, iommufd, VFIO, KVM with guest_memfd, PCI TSM/TDISP)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import Fault

__all__ = ["Fault", "SimHost", "LinuxHost", "Profile"]

if TYPE_CHECKING:
    from .host.linux import LinuxHost
    from .host.sim import SimHost
    from .kernel.profile import Profile


def __getattr__(name: str) -> Any:
    # Lazy so `import passthru` stays cheap and the layers load only when used.
    if name == "SimHost":
        from .host.sim import SimHost

        return SimHost
    if name == "LinuxHost":
        from .host.linux import LinuxHost

        return LinuxHost
    if name == "Profile":
        from .kernel.profile import Profile

        return Profile
    raise AttributeError(name)
