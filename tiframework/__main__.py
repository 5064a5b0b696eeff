import sys

from tiframework.cli import main

sys.exit(main())
