import sys

from rlhf_lab.cli import main

sys.exit(main())
