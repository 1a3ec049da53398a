"""``python -m olss_cli``: the ``olss`` command."""

import sys

from olss_cli.main import main

sys.exit(main())
