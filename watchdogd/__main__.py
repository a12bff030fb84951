import sys

from watchdogd.cli import main

sys.exit(main())
