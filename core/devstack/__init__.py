"""The local stack on one machine: the embedded PostgreSQL, the Temporal dev server, the supervisor `devart up` runs,
and the state folder they share.
"""
