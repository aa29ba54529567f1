import sys

from marketdata.cli import main

sys.exit(main())
