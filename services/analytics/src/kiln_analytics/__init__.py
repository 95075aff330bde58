"""Kiln analytics: what the phase-event log says about launches, builds and failures."""
