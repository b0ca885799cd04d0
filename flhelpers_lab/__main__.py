import sys

from flhelpers_lab.cli import main

sys.exit(main())
