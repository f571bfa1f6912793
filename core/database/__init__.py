"""PostgreSQL: the engine and sessions, the table models, and the migrations' runner.
"""
