"""``python -m kwik``: the command-line tool (see :mod:`kwik._cli`)."""

import sys

from kwik._cli import main

if __name__ == "__main__":
    sys.exit(main())
