"""`python -m engine_service` starts the engine; configuration: README "Configuration"."""

from __future__ import annotations

from engine_service.main import main

main()
