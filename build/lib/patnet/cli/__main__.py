"""``python -m patnet.cli`` (what ``torchrun -m patnet.cli train ...`` runs)."""
import sys

from . import main

sys.exit(main())
