"""The version of dbbasic-queue: the one place it is written (pyproject.toml reads it)."""

__version__ = '2.1.0'
