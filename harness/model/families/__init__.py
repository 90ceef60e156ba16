"""Operation families beyond mmops.c's own: each module here models the operations of one
guest/workloads/mmops-*.c file, and registers them when imported (all are, by this package):
    register_op(kind, ints=(...))                  harness/model/ops.py: the parser's fields
    register_expectation(kind, expect_fn)          harness/model/expect.py: the windows it must open
    register_judged(site, scenario...)             harness/model/callsites.py: the call sites it judges
A family is thus one C file and one Python module, and touches no shared table.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
