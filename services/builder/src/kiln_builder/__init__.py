"""Kiln builder service."""
