"""``python -m shadowft``: the `shadowft` command (shadowft/cli.py)."""

import sys

from shadowft.cli import main

sys.exit(main())
