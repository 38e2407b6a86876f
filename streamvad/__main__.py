import sys

from streamvad.cli import main

sys.exit(main())
