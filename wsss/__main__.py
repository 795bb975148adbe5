"""``python -m wsss``: the same as the ``wsss`` command."""

import sys

from .cli import main

sys.exit(main())
