"""``python -m orchestrator``: the ``mgas`` command (see :mod:`orchestrator.entry`)."""

import sys

from orchestrator.entry import main

sys.exit(main())
