"""``glimpse``: one command for what a user runs by hand.

    glimpse ingest DIR [DIR ...] --url URL   load folders into a running Glimpse
    glimpse dev [--tiny]                     run the three services locally, without Docker
    glimpse demo [--url URL]                 ingest the sample photos scikit-image ships

Each subcommand's own ``--help`` lists its options.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = {
    "ingest": "glimpse.cli.ingest",
    "dev": "glimpse.cli.dev",
    "demo": "glimpse.cli.demo",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in SUBCOMMANDS:
        print(__doc__.strip(), file=sys.stderr if args and args[0] not in ("-h", "--help")
              else sys.stdout)
        return 0 if not args or args[0] in ("-h", "--help") else 2
    # Imported on demand: `glimpse ingest` must not pay for what `glimpse dev` imports.
    module = importlib.import_module(SUBCOMMANDS[args[0]])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
