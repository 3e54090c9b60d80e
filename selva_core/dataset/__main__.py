"""``python -m selva_core.dataset``: see :mod:`selva_core.dataset.cli`."""

import sys

from selva_core.dataset.cli import main

sys.exit(main())
