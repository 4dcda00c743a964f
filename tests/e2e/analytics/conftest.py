"""Fixtures for the analytics process tests."""

from __future__ import annotations

from tests.integration.analytics.conftest import close_leaked_event_loops

__all__ = ["close_leaked_event_loops"]
