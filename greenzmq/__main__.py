"""``python -m greenzmq`` is the ``greenzmq`` command."""

from greenzmq.cli import main

raise SystemExit(main())
