"""``python -m deconvkernels.train ARGS`` = ``deconvnet train ARGS`` (for ``torchrun -m``)."""

import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
