"""`python -m bot` runs the Discord bot, like `qlora-bot run`."""

import sys

from bot.cli.main import main

sys.exit(main(["run", *sys.argv[1:]]))
