"""``python -m edgemesh`` is the ``edgemesh`` command."""

from edgemesh.cli import main

raise SystemExit(main())
