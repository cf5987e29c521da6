"""The `lazygrpc` command's subcommands that need more than a few lines (`lazygrpc.cli`)."""
