"""The bot process of qlora-bot: config, command line, job service and Discord front end (never torch)."""
