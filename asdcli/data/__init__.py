"""Clips in: DCASE names and layouts, audio loading."""
