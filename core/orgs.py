"""The organisation every install starts with: single-user local use never names another.

A module of its own so that every layer (the broker's names, the database's tenancy, the domain) can share it
without importing one another.
"""

DEFAULT_ORG = "default"
