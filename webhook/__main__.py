"""``python -m webhook`` is the ``sidecar-injector`` command."""

import sys

from webhook.cli.commands import main

sys.exit(main())
