import sys

from blurforge.cli import main

sys.exit(main())
