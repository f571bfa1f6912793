"""Shared core of devart: settings, contracts, database models, AMQP topology and errors.

Everything here is importable from the API, the pipeline worker and the agents alike; the contracts module in
particular stays free of side effects so that workflows can import it inside Temporal's sandbox.
"""
