"""Durable jobs: the JobService and its scheduler, executors and crash recovery (no Discord here)."""
