"""``python -m fedray.cli``: the same as the ``fedray`` command."""

import sys

from fedray.cli import main

sys.exit(main())
