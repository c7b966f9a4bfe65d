"""The data stage: fetching a dataset, reading and validating its rows, chat templates and tokenization.

It runs before the model stack: no module here imports torch, transformers, peft, bitsandbytes, trl or
accelerate (tests/test_import_boundaries.py), so a bad file is refused before any of them is loaded.
"""
