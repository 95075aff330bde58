"""Kiln resolver service."""
