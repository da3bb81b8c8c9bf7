"""Reusable widgets of the terminal app, one idea per module."""
