"""Histograms in the rollup rows: two parallel arrays per row instead of a row per bucket.

rollup_histograms held one row per (rollup key, bucket), so a batch upserted nearly a row
per event and a query read every bucket row. Each rollup row now carries its histogram as
bucket indexes and their counts: bigint[] on Postgres, appended to by the upsert and merged
by `histogram_merge` when they grow long, and JSON text on SQLite, merged in Python.
Existing histograms are folded into the arrays (and unfolded again on downgrade).

On Postgres rollup rows also get room for HOT updates and stay uncompressed in line up to
8 KB, so that the upsert of a busy hour row neither touches its indexes nor re-compresses
its histogram.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = ("tenant", "workflow_id", "step_id", "resolution", "minute")

# Buckets present on either side, each with the sum of its counts, in ascending order.
# Plain SQL so that the planner can inline it; immutable so that it may run anywhere.
_HISTOGRAM_MERGE = """
CREATE FUNCTION histogram_merge(
    buckets bigint[], counts bigint[], more_buckets bigint[], more_counts bigint[],
    OUT merged_buckets bigint[], OUT merged_counts bigint[]
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(bucket ORDER BY bucket), '{}'),
           coalesce(array_agg(count ORDER BY bucket), '{}')
    FROM (
        SELECT bucket, sum(count)::bigint AS count
        FROM (
            SELECT * FROM unnest(buckets, counts)
            UNION ALL
            SELECT * FROM unnest(more_buckets, more_counts)
        ) AS both_sides(bucket, count)
        GROUP BY bucket
    ) AS merged
$$
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _histogram_table() -> list[sa.Column[Any]]:
    return [
        sa.Column("tenant", sa.String(length=128), nullable=False),
        sa.Column("workflow_id", sa.String(length=256), nullable=False),
        sa.Column("step_id", sa.String(length=256), nullable=False),
        sa.Column("resolution", sa.Integer(), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
    ]


def upgrade() -> None:
    postgres = _postgres()
    array = sa.ARRAY(sa.BigInteger()) if postgres else sa.Text()
    empty = sa.text("'{}'") if postgres else sa.text("'[]'")
    with op.batch_alter_table("rollups") as batch:
        batch.add_column(
            sa.Column("histogram_buckets", array, nullable=False, server_default=empty)
        )
        batch.add_column(sa.Column("histogram_counts", array, nullable=False, server_default=empty))
    if postgres:
        op.execute(_HISTOGRAM_MERGE)
        op.execute(
            """
            UPDATE rollups SET histogram_buckets = h.buckets, histogram_counts = h.counts
            FROM (
                SELECT tenant, workflow_id, step_id, resolution, minute,
                    array_agg(bucket::bigint ORDER BY bucket) AS buckets,
                    array_agg(count ORDER BY bucket) AS counts
                FROM rollup_histograms GROUP BY tenant, workflow_id, step_id, resolution, minute
            ) AS h
            WHERE (rollups.tenant, rollups.workflow_id, rollups.step_id, rollups.resolution,
                rollups.minute) = (h.tenant, h.workflow_id, h.step_id, h.resolution, h.minute)
            """
        )
        op.execute("ALTER TABLE rollups SET (fillfactor = 70, toast_tuple_target = 8160)")
    else:
        _fold_histograms_sqlite()
    # The arrays are always written by the ingest; a default would only hide a missing one.
    with op.batch_alter_table("rollups") as batch:
        batch.alter_column("histogram_buckets", existing_type=array, server_default=None)
        batch.alter_column("histogram_counts", existing_type=array, server_default=None)
    op.drop_index("ix_rollup_histograms_time", table_name="rollup_histograms")
    op.drop_table("rollup_histograms")


def _fold_histograms_sqlite() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(f"SELECT {', '.join(_KEY)}, bucket, count FROM rollup_histograms")
    ).all()
    histograms: dict[tuple[Any, ...], dict[int, int]] = defaultdict(dict)
    for row in rows:
        histograms[tuple(row[:5])][int(row[5])] = int(row[6])
    update = sa.text(
        "UPDATE rollups SET histogram_buckets = :buckets, histogram_counts = :counts WHERE "
        + " AND ".join(f"{name} = :{name}" for name in _KEY)
    )
    for key, counts in histograms.items():
        ordered = sorted(counts)
        bind.execute(
            update,
            {
                **dict(zip(_KEY, key, strict=True)),
                "buckets": json.dumps(ordered),
                "counts": json.dumps([counts[bucket] for bucket in ordered]),
            },
        )


def downgrade() -> None:
    postgres = _postgres()
    op.create_table(
        "rollup_histograms",
        *_histogram_table(),
        sa.PrimaryKeyConstraint(*_KEY, "bucket"),
    )
    op.create_index(
        "ix_rollup_histograms_time",
        "rollup_histograms",
        ["tenant", "resolution", "minute", "workflow_id"],
        unique=False,
    )
    if postgres:
        op.execute(
            """
            INSERT INTO rollup_histograms (tenant, workflow_id, step_id, resolution, minute,
                bucket, count)
            SELECT tenant, workflow_id, step_id, resolution, minute, h.bucket, sum(h.count)
            FROM rollups, unnest(histogram_buckets, histogram_counts) AS h(bucket, count)
            GROUP BY tenant, workflow_id, step_id, resolution, minute, h.bucket
            """
        )
        op.execute("ALTER TABLE rollups RESET (fillfactor, toast_tuple_target)")
        op.execute("DROP FUNCTION histogram_merge(bigint[], bigint[], bigint[], bigint[])")
    else:
        _unfold_histograms_sqlite()
    with op.batch_alter_table("rollups") as batch:
        batch.drop_column("histogram_counts")
        batch.drop_column("histogram_buckets")


def _unfold_histograms_sqlite() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(f"SELECT {', '.join(_KEY)}, histogram_buckets, histogram_counts FROM rollups")
    ).all()
    insert = sa.text(
        f"INSERT INTO rollup_histograms ({', '.join(_KEY)}, bucket, count) "
        f"VALUES ({', '.join(f':{name}' for name in _KEY)}, :bucket, :count)"
    )
    values = [
        {**dict(zip(_KEY, row[:5], strict=True)), "bucket": bucket, "count": count}
        for row in rows
        for bucket, count in zip(json.loads(row[5]), json.loads(row[6]), strict=True)
    ]
    if values:
        bind.execute(insert, values)
