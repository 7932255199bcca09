"""The IOMMU subsystem (drivers/iommu/): iommufd, its object model and the test mock."""
