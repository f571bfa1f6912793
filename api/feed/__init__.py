"""The live event feed: one LISTEN connection per process, delivered in commit order, capped per client.
"""
