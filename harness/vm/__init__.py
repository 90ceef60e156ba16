"""The QEMU machine and the three ways the harness talks to it: serial console, QMP, SSH.

Nothing in here knows about scenarios.
"""
