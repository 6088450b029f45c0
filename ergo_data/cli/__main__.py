"""``python -m ergo_data.cli ...`` is the ``ergo`` command (what ``accelerate launch -m ergo_data.cli`` runs)."""

import sys

from ergo_data.cli.app import main

sys.exit(main())
