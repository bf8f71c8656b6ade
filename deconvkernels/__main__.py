"""``python -m deconvkernels`` runs the ``deconvnet`` command."""

import sys

from .cli import main

sys.exit(main())
