"""Domain functions: every state change of runs, task attempts, agents, budgets and costs, events, the pipeline
catalogue and dead letters. The routes, the activities and the CLI call these; none of them knows HTTP.
"""
