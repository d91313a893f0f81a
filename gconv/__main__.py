import sys

from gconv.cli import main

sys.exit(main())
