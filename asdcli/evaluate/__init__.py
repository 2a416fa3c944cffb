"""Scores -> the official metrics, tables and plots."""
