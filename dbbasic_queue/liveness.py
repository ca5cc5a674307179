"""Who is this worker, and is another worker still alive?

A claim records `host:pid:start`, where start is the boot id and the kernel's start
time of the process, so a pid reused after a crash or a reboot is not mistaken for the
worker that died.
"""

import os
import socket

BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id'


def _read_boot_id():
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()[:8]
    except OSError:
        return 'noboot'


HOST = socket.gethostname().replace(':', '_')
BOOT_ID = _read_boot_id()


def start_marker(pid):
    """Return the start marker of pid, None if no such process, '' if unknowable here."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _marker_without_proc(pid)
    # Field 22 (starttime) counted after the ')' that closes the command name.
    start_ticks = stat[stat.rindex(b')') + 2:].split()[19].decode()
    return f'{BOOT_ID}.{start_ticks}'


def _marker_without_proc(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ''


_current = (None, None)   # (pid, worker): a forked child has another pid, so its own


def current_worker():
    """The identity written into the claims of this process."""
    global _current
    pid = os.getpid()
    if _current[0] != pid:
        _current = (pid, f'{HOST}:{pid}:{start_marker(pid) or ""}')
    return _current[1]


def claim_is_alive(worker, claimed_at, now, lease_seconds):
    """True while the worker that claimed a job may still be running it.

    Same host: alive exactly while a process with that pid and start marker exists.
    Other host: alive until claimed_at + lease_seconds (we cannot see its processes).
    An empty worker (a 1.0.0 'processing' row) is never alive: 1.0.0 left those behind
    when its worker died.
    """
    try:
        host, pid, marker = worker.rsplit(':', 2)
        pid = int(pid)
    except ValueError:
        return False
    if host != HOST:
        return now < claimed_at + lease_seconds
    current = start_marker(pid)
    if current is None:
        return False
    return current == '' or marker == '' or current == marker
