"""README's analytics configuration table lists every STEPSTREAM_ANALYTICS_* setting."""

from __future__ import annotations

from analytics_service.settings import AnalyticsSettings
from tests.readme_settings import settings_missing_from_readme


def test_every_setting_is_documented_in_the_readme() -> None:
    assert settings_missing_from_readme(AnalyticsSettings, "### Analytics") == []
