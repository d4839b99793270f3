"""The reliability figures the fault, fuzz and load tests record (printed at the end of
the run by conftest's `pytest_terminal_summary`), and the process memory they measure."""

from __future__ import annotations


class Figures:
    """What the reliability tests tried, how many times and what held, one line each,
    printed under "reliability figures" at the end of the run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, what: str, **figures: object) -> None:
        """One line: `what: name value, name value, ...` (ints with thousands commas)."""
        shown = ", ".join(f"{name.replace('_', ' ')} {_shown(value)}"
                          for name, value in figures.items())
        self.lines.append(f"{what}: {shown}")


def _shown(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


FIGURES = Figures()


def memory(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of process `pid`, in bytes (VmHWM: the peak since it started, or
    since `reset_peak`)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def reset_peak(pid: int) -> None:
    """Have VmHWM start again from the present RSS (/proc/PID/clear_refs, Linux 4.0+)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
