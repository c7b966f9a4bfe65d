"""A memory cap for one stage of a worker: the soft RLIMIT_DATA is lowered on entry and raised back on exit.

RLIMIT_DATA, not RLIMIT_AS: it counts the heap and private writable mappings (what parsing a file
allocates) but not shared libraries or reserved address space, so the figure means what it says; and
since only the soft limit moves, the stage after it (CUDA maps a huge address space) runs uncapped.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

from protocol.errors import UserError

MIB = 1 << 20


@contextmanager
def memory_cap(megabytes: int, what: str, setting: str) -> Iterator[None]:
    """Run the block with at most `megabytes` MiB of data memory; running out is the person's UserError.

    `what` names the work ("reading the dataset"), `setting` the key an admin raises."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    # The allowance is the stage's own: on top of what the process already holds (the interpreter, its
    # modules, and glibc's per-thread arenas of 64 MiB each, which on a many-core machine alone can pass
    # a small cap and make the next thread or allocation fail where no Python error is raised).
    cap = data_in_use() + megabytes * MIB
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)  # never loosen a limit someone else set
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    except MemoryError:
        # Raised back before anything else: building the message and reporting it need memory too.
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        raise UserError(
            f"{what} needs more than {megabytes} MiB of memory ({setting})",
            "use a smaller dataset or shorter rows, or ask an admin to raise the limit",
        ) from None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def data_in_use() -> int:
    """The process's data memory now (VmData: what RLIMIT_DATA counts), 0 where /proc does not say."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):  # noqa: SIM115 - a few lines, read once
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
