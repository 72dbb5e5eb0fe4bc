"""``python -m worker.embedded DIR [--name NAME] [--force]``: build an embedded model."""

import sys

from worker.embedded.models import main

sys.exit(main())
