"""``python -m whizorch.demo``: the same as ``whizorch demo``."""

import sys

from whizorch.cli import main

if __name__ == "__main__":
    main(["demo", *sys.argv[1:]], prog_name="whizorch")
