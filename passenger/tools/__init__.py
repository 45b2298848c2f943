"""Command-line tools for a running server: ``passenger-status`` and ``passenger-config``.

They find the server through its instance directory (``passenger.admin.instance``)
and talk to its admin API over the directory's Unix socket, with plain blocking
stdlib code: no Twisted, no reactor, a fast start.
"""
