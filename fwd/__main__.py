"""``python -m fwd`` is the ``fwd`` command."""

import sys

from fwd.cli import main

sys.exit(main())
