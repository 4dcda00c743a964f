"""`python -m analytics_service` starts the analytics service."""

from __future__ import annotations

from analytics_service.main import main

main()
