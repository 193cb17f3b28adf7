"""``python -m normzoo``: the ``normzoo`` command (`normzoo.cli`)."""

import sys

from normzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m normzoo"))
