"""Host software: checkpoint loaders, mapper, command streams, transports and the CLI."""
