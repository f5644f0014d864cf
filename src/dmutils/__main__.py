import sys

from dmutils.commands import main

sys.exit(main())
