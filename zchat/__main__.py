"""``python -m zchat``: the same as the ``zchat`` command."""

from zchat.cli import main

raise SystemExit(main())
