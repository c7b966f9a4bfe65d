"""The serve worker's parts: request queue and batching, prompts, incremental decoding, and the engine."""
