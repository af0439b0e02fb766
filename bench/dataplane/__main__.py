"""``python -m bench.dataplane`` (from the repository root): see run.py."""

import sys

from bench.dataplane.run import main

sys.exit(main())
