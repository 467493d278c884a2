"""``python -m collapsekit`` (and ``torchrun -m collapsekit``) runs the CLI."""

from collapsekit.cli.app import main

if __name__ == "__main__":
    main()
