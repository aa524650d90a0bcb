"""The ``moe`` command line: the top floor, above ``flows`` and ``serving``.

Nothing below imports from here: ``pipeline`` joins ``moe`` and ``storage``, ``flows``
wraps ``pipeline`` in Prefect, ``serving`` answers HTTP, and this package starts each of
them on a user's command.
"""

from cli.commands import main

__all__ = ["main"]
