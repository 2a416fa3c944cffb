"""Synthetic DCASE-layout machine sounds for the demo and the tests."""
