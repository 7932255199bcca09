"""PCI TSM (drivers/pci/tsm.c, include/linux/pci-tsm.h): the core (core.py), what the platform
drivers share (platform.py) and the platform TSM drivers for TDX Connect (tdx_connect.py),
SEV-TIO (sev_tio.py) and Arm CCA (cca.py)."""
