"""Agent plugins that only the tests and the benchmarks load (``DEVART_AGENT_MODULES``): never built in."""
