"""The stepstream analytics service: engine events into aggregates, and queries on them.

Layers: `core` (pure domain), `storage` (SQLAlchemy), `transport` (gRPC); `main` wires them.
"""
