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
