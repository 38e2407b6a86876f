import sys

from streamvad.cli import main

if __name__ == "__main__":  # `python -m streamvad`; importing the module runs nothing
    sys.exit(main())
