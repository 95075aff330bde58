"""Kiln launcher service."""
