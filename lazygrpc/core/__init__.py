"""The pure core: session state and codecs, call context, chains, values, errors. No I/O."""
