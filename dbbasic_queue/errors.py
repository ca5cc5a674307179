"""Exceptions raised by dbbasic_queue. Every one derives from QueueError."""


class QueueError(Exception):
    """Base class of every error this package raises."""


class InvalidJobError(QueueError, ValueError):
    """An argument to enqueue (type, payload, run_at) cannot be stored; nothing was written."""


class StorageError(QueueError):
    """The queue file could not be read or written; the previous file is intact."""


class JobTimedOut(BaseException):
    """Raised inside a handler that ran past its timeout.

    A BaseException, like KeyboardInterrupt, so that a handler's `except Exception`
    cannot swallow it; the worker records the attempt as 'TimeoutError: ...'.
    """


class EditConflict(QueueError):
    """A hand edit (dbbasic-queue edit) changed jobs that workers changed meanwhile;
    nothing was saved."""
