"""``python -m cli ...`` runs the ``moe`` command line (what the installed ``moe`` runs)."""

import sys

from cli.commands import main

sys.exit(main())
