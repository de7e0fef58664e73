import sys

from rescue_eval.cli import main

sys.exit(main())
