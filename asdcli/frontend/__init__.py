"""Clip -> fbank -> BEATs -> embedding."""
