import sys

from segany.cli import main

sys.exit(main())
