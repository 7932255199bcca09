"""iommufd (drivers/iommu/iommufd/): /dev/iommu, laid out like the kernel's directory.

- main.py — the context, the object table, ioctl dispatch, IOMMU_DESTROY, IOMMU_OPTION;
- ioas.py — the IOAS ioctls; io_pagetable.py — areas, IOVA allocation, reserved and allowed
  ranges, domains; pages.py — iopt_pages: the pinned source of an area (user memory, a
  memfd by offset, a dma-buf) and its RLIMIT_MEMLOCK charge;
- hw_pagetable.py, device.py, viommu.py, selftest.py — HWPTs, the device API VFIO calls,
  vIOMMU objects, and CONFIG_IOMMUFD_TEST's mock.
"""
