"""`python -m tender_ray` is `tender-ray`."""

import sys

from tender_ray.cli.main import main

sys.exit(main())
