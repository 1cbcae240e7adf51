"""``python -m aeutils COMMAND ...``: see :mod:`aeutils.cli`."""
from aeutils.cli import main

raise SystemExit(main())
