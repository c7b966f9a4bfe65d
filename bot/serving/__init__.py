"""Trying adapters: the serve worker's client, adapter lookup and the ask flow shared by CLI and Discord."""
