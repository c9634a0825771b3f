"""``python -m pipelines.ops``: the operators' command line (:mod:`pipelines.ops.cli`)."""

import sys

from pipelines.ops.cli import main

sys.exit(main())
