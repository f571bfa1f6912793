"""The devart HTTP API (FastAPI): runs, pipelines, and the routes agents report through."""
