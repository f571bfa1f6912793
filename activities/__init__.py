"""Everything a workflow asks the world to do: sandboxes, dispatch to agents, records."""
