"""The Discord front end: a discord.py client whose cogs translate Discord <-> JobService calls."""
