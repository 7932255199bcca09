"""drivers/pci/: the parts of the PCI core the model has (tsm/: the TEE Security Manager core
and the platform TSM drivers). Enumeration still lives in kernel/vfio/pci/vfio_pci.py's
``pci_devices`` static."""
