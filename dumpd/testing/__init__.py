"""Support for testing dumpd and its plugins; nothing here serves a dump.

- `dumpd.testing` (this package) is the public face of the conformance kit, the
  import path plugin authors use (`from dumpd.testing import HookConformance`); the
  kit's checks one by one are in `dumpd.testing.conformance`.
- `dumpd.testing.elfwriter` writes ELF cores shaped like a kdump vmcore, and
  `dumpd.testing.guest` models the guest `dumpd demo` and the benchmarks dump: dumpd's
  own tests, demo and bench use them, and they make no promise to anyone else.
- `dumpd.testing.kernel` builds a dead x86_64 kernel's memory (VMCOREINFO, page tables,
  mem_section, struct pages of each kernel variant) with what makedumpfile would
  exclude from it, for the tests of dumpd's kernel readers; same terms.

Design rule: the product (dumpd's other packages) never imports this package, except
the commands that run it on purpose (`dumpd hook check`, `dumpd demo`).
"""

from dumpd.testing.conformance import ConformanceError, ConformanceReport, check_plugin
from dumpd.testing.suite import HookConformance

__all__ = ["ConformanceError", "ConformanceReport", "HookConformance", "check_plugin"]
