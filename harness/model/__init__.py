"""The reference model: pure Python, no I/O.

It is written from ../shared/reference/kernel-semantics.md (Linux 6.1 and
6.12, read from source), not from what the probe observed; where a kernel
was seen to do more than the specification says, the rule says so and names
the kernel source that explains it.

    versions.py   one feature table: what each kernel version has
    findings.py   what a broken rule looks like in a report
    contract.py   rules every trace obeys (pairing, nesting, blockable, ...)
    ops.py        the workload's operations and the address space they shape
    expect.py     per-operation expectations, and matching them to a trace
"""

# ops.py imports the operation families (harness/model/families/) at its end, and a family imports
# expect.py, which imports ops.py: importing ops.py first, here, is the only order in which every
# module is whole when the next one reads it (expect.py first would hand the families a half-made
# expect module).
from harness.model import ops  # noqa: E402

__all__ = ["ops"]
