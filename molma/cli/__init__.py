"""Command-line interface. Every module in this package that defines ``register(subparsers)`` adds one
subcommand; ``molma.cli.main`` discovers them, so each area owns its own CLI file."""
