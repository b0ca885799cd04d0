"""Helpers of the tests that start servers of their own (a Flower SuperLink, a Ray cluster): a free
port, and ending exactly the processes a test started, found by a marker in their command line."""

from __future__ import annotations

import socket

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(marker: str) -> list[psutil.Process]:
    """The processes with ``marker`` in a part of their command line (e.g. a temp dir of the test's)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_processes_using(marker: str, timeout: float = 15.0) -> None:
    """Terminate the processes of :func:`processes_using` and all their children, by pid (nobody
    else's), and kill what is still alive after ``timeout`` seconds."""
    procs: dict[int, psutil.Process] = {}
    for p in processes_using(marker):
        try:
            for q in (p, *p.children(recursive=True)):
                procs[q.pid] = q
        except psutil.NoSuchProcess:
            continue
    for q in procs.values():
        try:
            q.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for q in alive:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
