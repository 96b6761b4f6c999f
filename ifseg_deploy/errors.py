"""The base class of every error a user can cause: the command line prints its message, not a traceback."""

from __future__ import annotations


class IfsegError(Exception):
    """A problem with the user's input or environment (a file, an option, a missing package), not a bug.

    The message says what is wrong and what to do. ``ifseg-deploy`` prints it as ``Error: ...`` and exits with
    :attr:`exit_code`; ``--debug`` (or ``IFSEG_DEPLOY_DEBUG=1``) shows the traceback instead.
    """

    exit_code = 1


class IfsegUsageError(IfsegError, ValueError):
    """Options that cannot go together (exit status 2, as for click's own usage errors)."""

    exit_code = 2
