"""The errors dbbasic_queue raises on purpose. Every one a caller can see derives from
QueueError (the README has the table); JobTimedOut is not one: it is raised inside a
handler to stop it, and never reaches the caller of process_jobs."""


class QueueError(Exception):
    """Base class of every error this package raises to its callers."""


class InvalidArgumentError(QueueError, ValueError, TypeError):
    """An argument the library cannot use (a bad status, a negative limit, handlers that
    are not a dict of callables); nothing was written. Also a ValueError and a TypeError,
    so code written for the plain errors keeps working."""


class InvalidJobError(InvalidArgumentError):
    """An argument to enqueue (type, payload, run_at, options) cannot be stored; nothing
    was written."""


class JobNotFound(QueueError, KeyError):
    """No job with this id (retry of an unknown id). Also a KeyError."""

    def __str__(self):
        return f'no job {self.args[0]}' if self.args else 'no such job'


class StorageError(QueueError):
    """The queue file could not be read or written; the previous file is intact."""


class EditConflict(QueueError):
    """A hand edit (dbbasic-queue edit) changed jobs that workers changed meanwhile;
    nothing was saved."""


class JobTimedOut(BaseException):
    """Raised inside a handler that ran past its timeout.

    A BaseException, like KeyboardInterrupt, so that a handler's `except Exception`
    cannot swallow it; the worker records the attempt as 'TimeoutError: ...'.
    """
