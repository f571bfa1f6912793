"""What every devart process shares, each concern in one home.

- Contracts at this level: ``settings`` (every setting, read only through its class), ``errors`` (the error tree),
  ``contracts``, ``reports`` and ``pipelines`` (what the API, the workflow, the worker and the agents exchange),
  ``bounds`` and ``yaml_safe`` (input limits), ``temporal`` (the client), ``security`` (keys).
- ``database``: PostgreSQL, its models and the migrations' runner.
- ``messaging``: RabbitMQ's lanes, bands and dead-letter queues.
- ``telemetry``: traces, metrics and logs.
- ``devstack``: the local stack ``devart up`` runs (embedded PostgreSQL, Temporal dev server, supervisor).

The contracts stay free of side effects, so workflows can import them inside Temporal's sandbox.
"""
