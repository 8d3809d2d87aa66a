"""A control group per execution worker, where this machine lets us make one: one memory cap and one
process cap for everything the worker's programs start together. setrlimit caps each process alone,
so without it a program that forks 60 children of 1 GiB each could still take the machine.

cgroup v1 (a `memory` and a `pids` hierarchy) is used when mounted; v2 only when our own cgroup
already delegates both controllers to its children. Elsewhere (no root, no delegation) `create`
returns None and the per-process limits are all there is.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("slipstream.eval.execution")
_ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> our cgroup path in that hierarchy."""
    paths: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.lstrip("/")
    return paths


def _limits(memory_bytes: int, processes: int) -> list[tuple[Path, str, str]] | None:
    """(directory to make, file, value) for each limit, or None where no hierarchy fits."""
    own = _own_paths()
    if {"memory", "pids"} <= own.keys() and (_ROOT / "memory").is_dir() and (_ROOT / "pids").is_dir():
        return [
            (_ROOT / "memory" / own["memory"], "memory.limit_in_bytes", str(memory_bytes)),
            (_ROOT / "pids" / own["pids"], "pids.max", str(processes)),
        ]
    if "" in own:
        parent = _ROOT / own[""]
        try:
            delegated = set((parent / "cgroup.subtree_control").read_text().split())
        except OSError:
            return None
        if {"memory", "pids"} <= delegated:
            return [(parent, "memory.max", str(memory_bytes)), (parent, "memory.swap.max", "0"), (parent, "pids.max", str(processes))]
    return None


@dataclass
class Cgroup:
    directories: list[Path] = field(default_factory=list)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.directories]

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int) -> Cgroup | None:
        limits = _limits(memory_bytes, processes)
        if limits is None:
            return None
        group = cls()
        try:
            for parent, file, value in limits:
                directory = parent / name
                if directory not in group.directories:
                    directory.mkdir()
                    group.directories.append(directory)
                if (directory / file).exists():
                    (directory / file).write_text(value)
        except OSError as exc:
            log.info("no control group for the execution box (%s): per-process limits only", exc)
            group.remove()
            return None
        return group

    def remove(self) -> None:
        """Once its processes are gone (they take a moment to leave after SIGKILL)."""
        for directory in self.directories:
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.warning("control group %s could not be removed", directory)


def available() -> bool:
    """Whether this machine lets us make a worker's control group (tried with a real one)."""
    group = Cgroup.create(f"slipstream-probe-{os.getpid()}", 1 << 30, 64)
    if group is None:
        return False
    group.remove()
    return True
