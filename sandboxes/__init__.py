"""Sandboxes: where agent tasks run untrusted code. One interface, several backends chosen by configuration."""
