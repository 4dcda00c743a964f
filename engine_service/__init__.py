"""The stepstream engine: runs workflow DAGs durably and streams every state change.

Layers: `core` (pure domain), `storage` (SQLAlchemy), `transport` (gRPC); `main` wires them.
"""
