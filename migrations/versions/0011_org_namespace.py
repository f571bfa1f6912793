"""An organisation may run in its own Temporal namespace, for hard isolation of its workflow histories.

``temporal_namespace`` is NULL for the deployment's namespace (``TEMPORAL_NAMESPACE``, the default). It is set when
the organisation is created and never changes afterwards: a run's workflow lives in its organisation's namespace,
so moving an organisation would strand its runs' histories.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("organisations", sa.Column("temporal_namespace", sa.String(), nullable=True))
    op.create_unique_constraint("organisations_temporal_namespace_key", "organisations", ["temporal_namespace"])


def downgrade() -> None:
    op.drop_constraint("organisations_temporal_namespace_key", "organisations")
    op.drop_column("organisations", "temporal_namespace")
