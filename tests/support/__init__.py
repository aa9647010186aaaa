"""Helpers shared by tests: one module per kind of thing a test drives."""
