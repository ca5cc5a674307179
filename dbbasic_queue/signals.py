"""Signals around running a handler: SIGALRM for timeouts, SIGTERM/SIGINT deferred
until the current job has finished and the unstarted claims are given back."""

import logging
import os
import signal
import threading
from contextlib import contextmanager

from .errors import JobTimedOut

log = logging.getLogger('dbbasic_queue')

DEFERRED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def time_limit(seconds):
    """Raise JobTimedOut in the main thread once seconds have passed (0/None: no limit)."""
    if not seconds:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        log.warning('timeout of %g s not enforced: process_jobs is not in the main thread',
                    seconds)
        yield
        return

    def expire(signum, frame):
        raise JobTimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def deferred_signals(run):
    """While jobs run, SIGTERM and SIGINT ask the loop to stop after the current job.

    Afterwards each signal is handled as before (by default SIGTERM terminates the
    process and SIGINT raises KeyboardInterrupt), once the claims of jobs not yet
    started have been given back. A second SIGINT interrupts the running job at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if signum in run.signals and signum == signal.SIGINT:
            run.interrupting = True
            raise KeyboardInterrupt
        log.warning('%s: stopping after the current job', signal.Signals(signum).name)
        run.signals.append(signum)
        run.stop_requested = True

    previous = {}
    for signum in DEFERRED_SIGNALS:
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            previous[signum] = handler
            signal.signal(signum, request_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(run.signals):
            if previous[signum] == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
            elif callable(previous[signum]):
                previous[signum](signum, None)
