"""`python -m tender_ray` is `tender-ray`."""

import sys

from .cli import main

sys.exit(main())
