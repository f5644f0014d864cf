import sys

from dmutils.cli import main

sys.exit(main())
