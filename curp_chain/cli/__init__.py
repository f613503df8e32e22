"""The `curp` command line: one module per group of subcommands, :mod:`.main` wires them."""
