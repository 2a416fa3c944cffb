"""BEATs model package: see ``asdcli.model.beats``."""
