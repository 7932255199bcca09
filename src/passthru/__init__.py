"""passthru: an executable model of the Linux host stack through which devices and VMs share
memory (dma-buf, iommufd, VFIO, KVM with guest_memfd, PCI TSM/TDISP)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import Fault

__all__ = ["Fault", "SimHost", "LinuxHost", "Profile"]

if TYPE_CHECKING:
    from .host.linux import LinuxHost
    from .host.sim import SimHost
    from .kernel.profile import Profile

_LAZY = {"SimHost": ".host.sim", "LinuxHost": ".host.linux", "Profile": ".kernel.profile"}


def __getattr__(name: str) -> Any:
    # Lazy on purpose, not for an import cycle: `import passthru` takes ~16 ms, and the first
    # use of SimHost loads the whole model (~90 ms more); each layer loads only when used.
    if name not in _LAZY:
        raise AttributeError(name)
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
