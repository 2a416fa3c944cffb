"""The thin command-line layer: parse options, call a stage, render its result."""
