"""Entry point: `python -m avcl.evaluate --help`."""
import sys

from avcl.evaluate.cli import main

sys.exit(main())
