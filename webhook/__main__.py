"""``python -m webhook`` is the ``sidecar-injector`` command."""

import sys

from webhook.cli import main

sys.exit(main())
