"""One module per `odenets` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
