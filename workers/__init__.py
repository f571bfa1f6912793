"""Long-running devart processes: the pipeline worker and the agent worker with its skills."""
