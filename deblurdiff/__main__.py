import sys

from deblurdiff.cli import main

sys.exit(main())
