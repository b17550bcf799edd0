"""CLI subcommands that belong to no other package (build, run, bench, ...)."""
