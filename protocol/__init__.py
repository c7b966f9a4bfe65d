"""The contract every qlora-bot process shares (bot, storage, the workers): stdlib only.

job_spec (what a person asked for), events (what a training worker says), serve (the serve worker's
requests and events), job_folder (a job folder's layout and the adapter record in it), sources (Hub id,
URL or path), errors (the one user-error type), codec and json_lines (the strict wire format).
"""
