"""``python -m melcli``."""

from melcli.cli import main

main()
