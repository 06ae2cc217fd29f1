import sys

from glimpse.cli.main import main

sys.exit(main())
