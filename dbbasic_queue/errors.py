"""The errors dbbasic_queue raises on purpose. Every one a caller can see derives from
QueueError (the README has the table); JobTimedOut is not one: it is raised inside a
handler to stop it, and never reaches the caller of process_jobs. error_text and
safe_repr describe what a user's code raised or returned without trusting its methods."""


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


def error_text(exc):
    """'Type: message' of an exception, whatever its __str__ does (a failing one gives
    the type and its args)."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:
        message = f'<str() failed; args {safe_repr(getattr(exc, "args", ()))}>'
    return f'{name}: {message}'


def safe_repr(value, limit=None):
    """repr(value), cut to limit characters (None: whole); a placeholder naming its type
    where repr raises."""
    try:
        text = repr(value)
    except Exception:
        text = f'<{type(value).__name__} object; repr() failed>'
    return text if limit is None or len(text) <= limit else text[:limit] + '...'
