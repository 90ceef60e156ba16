"""notifier-harness: boots a kernel under test in QEMU and judges its mmu_notifier behaviour."""

__version__ = "0.1.0"
