"""`python -m bot.cli ARGS` is `qlora-bot ARGS`."""

import sys

from bot.cli.main import main

sys.exit(main())
