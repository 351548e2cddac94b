"""Shared by the benchmarks: the machine line and writing one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DOC_TITLE = "# Benchmarks"


def machine(packages: tuple[str, ...] = ("grpcio",)) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in packages)
    return (
        f"{len(os.sched_getaffinity(0))} CPUs ({model[1].strip() if model else 'unknown CPU'}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, {versions}"
    )


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; fields after it are fixed. utime, stime: fields 14, 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class HostTicks:
    """The whole machine's clock ticks so far (all cores), from one read of /proc/stat's first line."""

    busy: int  # user + nice + system + irq + softirq
    # Time the hypervisor ran something else while this virtual machine had work: the share of a
    # window it takes is the host's phase, measured rather than guessed.
    stolen: int
    total: int

    def busy_seconds_since(self, before: HostTicks) -> float:
        return (self.busy - before.busy) / os.sysconf("SC_CLK_TCK")

    def steal_percent_since(self, before: HostTicks) -> float:
        elapsed = self.total - before.total
        return 100.0 * (self.stolen - before.stolen) / elapsed if elapsed > 0 else 0.0


def host_ticks() -> HostTicks:
    with Path("/proc/stat").open() as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    busy = user + nice + system + irq + softirq
    return HostTicks(busy=busy, stolen=steal, total=busy + idle + iowait + steal)


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section that starts with `heading` (a `## ` line), keeping every other section."""
    text = path.read_text() if path.exists() else f"{DOC_TITLE}\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(heading))
        rest = "" if following < 0 else "\n" + text[following + 1 :]
        text = text[:start] + section + rest
    path.write_text(text)
