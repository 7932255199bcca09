"""VFIO: userspace drivers for devices (drivers/vfio/): the core (vfio_main.py), the device
cdev (device_cdev.py), the iommufd glue (iommufd.py) and vfio-pci (pci/)."""
