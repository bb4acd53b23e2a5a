"""``python -m webhook`` is the ``sidecar-injector`` command."""

import sys

from webhook.cli.main import main

sys.exit(main())
