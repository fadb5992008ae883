"""``python -m minicnn``: the same as the ``minicnn`` command (see ``minicnn.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
