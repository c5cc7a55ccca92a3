"""`python -m imagelora_dist ...` is the same as the `imagelora-dist` console script."""

import sys

from imagelora_dist.cli import main

sys.exit(main())
