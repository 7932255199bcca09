"""Userspace over the Host protocol: rust-vmm-style wrappers (kvm-ioctls, vm-memory,
vmm-sys-util) so VMM code reads like VMM code and runs unchanged on SimHost and LinuxHost.

These modules import only passthru.uapi and the Host protocol, never the model.
"""

from __future__ import annotations

from .iommufd import HwInfo, Hwpt, Ioas, Iommufd, MockAccess, MockDomain, Vdevice, Viommu
from .kvm import EXIT_REASONS, INTERNAL_ERRORS, Kvm, Vcpu, VcpuExit, Vm
from .memory import GuestMemfd, GuestMemory, GuestRegion, Mapping, Memfd
from .vfio import (
    Assignment,
    BarSlot,
    DeviceInfo,
    IrqInfo,
    Region,
    VfioContainer,
    VfioDevice,
    VfioDmaBuf,
    VfioGroup,
    assign_device,
)

__all__ = [
    "Assignment",
    "BarSlot",
    "DeviceInfo",
    "IrqInfo",
    "Region",
    "VfioContainer",
    "VfioDevice",
    "VfioDmaBuf",
    "VfioGroup",
    "assign_device",
    "EXIT_REASONS",
    "GuestMemfd",
    "GuestMemory",
    "GuestRegion",
    "HwInfo",
    "Hwpt",
    "INTERNAL_ERRORS",
    "Ioas",
    "Iommufd",
    "Kvm",
    "Mapping",
    "Memfd",
    "MockAccess",
    "MockDomain",
    "Vcpu",
    "VcpuExit",
    "Vdevice",
    "Viommu",
    "Vm",
]
