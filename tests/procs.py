"""Processes as /proc shows them, for tests that check who is still running (no psutil here)."""

from __future__ import annotations

from pathlib import Path


def stat(pid: int) -> tuple[str, str, int] | None:
    """A process's name, state and parent pid from /proc, or None once it is gone."""
    try:
        name, rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
    except OSError:
        return None
    state, ppid = rest.split()[:2]
    return name.split("(", 1)[1], state, int(ppid)


def alive(pid: int) -> bool:
    """Running, not a zombie: a process that exited under a parent that has not reaped it is gone."""
    found = stat(pid)
    return found is not None and found[1] != "Z"


def children(pid: int) -> dict[int, str]:
    """Live (not zombie) processes whose parent is `pid`: pid -> name."""
    stats = {int(p.name): stat(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    return {child: s[0] for child, s in stats.items() if s is not None and s[2] == pid and s[1] != "Z"}


def cmdline(pid: int) -> str:
    """Its command line, arguments joined by spaces; "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def maps(pid: int, library: str) -> bool:
    """Whether the process has a shared library whose file name starts with `library` mapped (e.g. "libtorch")."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return False
    return any(line.rsplit("/", 1)[-1].startswith(library) for line in lines if "/" in line)
