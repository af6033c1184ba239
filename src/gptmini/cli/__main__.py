import sys

from gptmini.cli import main

sys.exit(main())
