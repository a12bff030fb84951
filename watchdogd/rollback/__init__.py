"""Rollback: a plan of idempotent steps, journaled so that it runs exactly once."""
