"""``python -m melcli``."""

from melcli._entry import main

main()
