"""The bot's side of the process boundary: spawn a worker (training, data check, serving) with its
environment, read its JSON lines, stop it."""
