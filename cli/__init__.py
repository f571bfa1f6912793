"""The ``devart`` command line (typer + rich)."""
