"""Training engine: config, plugins, loop, schedule."""
