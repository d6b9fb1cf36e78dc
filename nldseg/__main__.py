"""``python -m nldseg``: the ``nldseg`` command (:mod:`nldseg.cli`)."""

from nldseg.cli import main

raise SystemExit(main())
