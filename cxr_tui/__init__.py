"""cxr terminal app and command line (entry point ``cxr-tui``)."""
