"""`python -m lazygrpc` runs the CLI."""

from lazygrpc.cli import main

raise SystemExit(main())
