"""What a run boots: kernels (Debian packages, build trees, bare images) and initramfs images.

Everything here is content-addressed under one cache directory so that a
second run with the same inputs downloads and builds nothing.
"""
