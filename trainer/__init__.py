"""The training side of qlora-bot: worker processes that load models and train (torch lives here only)."""
