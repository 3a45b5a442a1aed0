"""`edge-node` commands: one module per command, argument parsing and output only."""
