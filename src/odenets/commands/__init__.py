"""One module per `odenets` subcommand: `add_arguments(parser)` and `run(args) -> int`
(`odenets.cli` wires them up); the package exposes no names of its own."""
