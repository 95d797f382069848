import sys

from bismap.cli import main

sys.exit(main())
