"""``python -m whizorch`` is the ``whizorch`` command."""

from whizorch.cli import main

if __name__ == "__main__":
    main()
