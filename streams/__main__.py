"""``python -m streams``: the ``streams`` command (:func:`streams.cli.main`), for where the script is not on PATH."""

import sys

from streams.cli import main

sys.exit(main())
