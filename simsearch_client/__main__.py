"""`python -m simsearch_client ...` runs the command-line client."""

import sys

from simsearch_client.cli import main

sys.exit(main())
