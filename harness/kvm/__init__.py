"""KVM inside the kernel under test: the guest's own VMM (minivmm) and KVM's tracepoints."""
