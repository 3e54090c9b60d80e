"""``python -m selva_core.dataset``: see :mod:`selva_core.dataset.cli`."""

import sys

from selva_core.dataset.cli import main

if __name__ == "__main__":
    sys.exit(main())
