"""`python -m anobench ...` runs the CLI."""

from __future__ import annotations

import sys

from anobench.cli import main

sys.exit(main())
