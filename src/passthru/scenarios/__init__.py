"""The built-in scenario library: importing it registers every scenario."""

from . import demos, dma_buf, iommufd, kvm, tsm, vfio

__all__ = ["demos", "dma_buf", "iommufd", "kvm", "tsm", "vfio"]
