"""``python -m molma ...`` runs the CLI (also what launchers need: ``torchrun -m molma train ...``)."""

import sys

from molma.cli.main import main

sys.exit(main())
