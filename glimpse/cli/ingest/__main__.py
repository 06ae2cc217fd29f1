"""``python -m glimpse.cli.ingest``: the same as ``glimpse ingest``, for an image that has the
package's files but not its console script (the gateway image)."""

import sys

from glimpse.cli.ingest.cli import main

sys.exit(main())
