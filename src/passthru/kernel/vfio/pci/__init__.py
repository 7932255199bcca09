"""vfio-pci (drivers/vfio/pci/): the core device (vfio_pci_core.py), its virtual config
space (vfio_pci_config.py), region read/write (vfio_pci_rdwr.py), the dma-buf export
(dmabuf.py) and the vfio-pci driver that binds devices (vfio_pci.py)."""
