"""Prometheus metrics of devart's own processes (the Temporal SDK exports its own on a separate port).

Counters live in the process that sees the event: the API counts runs started and task outcomes, the pipeline
worker counts runs finished, stage durations and retries, and samples lane depth and agents by status.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_STARTED = Counter("devart_runs_started", "Runs started", ["pipeline", "trigger"])
RUNS_FINISHED = Counter("devart_runs_finished", "Runs finished", ["pipeline", "outcome"])
STAGE_SECONDS = Histogram(
    "devart_stage_duration_seconds", "Stage duration, first start to finish", ["pipeline", "stage", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
STAGE_RETRIES = Counter("devart_stage_retries", "Agent task attempts after the first", ["pipeline", "stage"])
TASKS_REPORTED = Counter("devart_tasks_reported", "Agent task outcomes accepted by the API", ["skill", "outcome"])
LANE_QUEUED = Gauge("devart_lane_queued_tasks", "Tasks waiting in a lane for an agent", ["lane"])
AGENTS = Gauge("devart_agents", "Registered agents by status", ["status"])
COST = Counter("devart_cost_total", "Cost of finished runs, in the price table's currency", ["pipeline"])
