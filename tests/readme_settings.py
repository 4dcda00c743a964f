"""README's configuration tables checked against the settings classes they document."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section(heading: str) -> str:
    """The README text under the heading that starts with `heading` (e.g. "### Engine"), up to
    the next heading of the same or a higher level; fenced code blocks are not headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line == heading or line.startswith(heading + " ")),
        None,
    )
    assert start is not None, f"README has no {heading!r} heading"
    section: list[str] = []
    fenced = False
    for line in lines[start + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        section.append(line)
    return "\n".join(section)


def settings_missing_from_readme(settings: type[BaseSettings], heading: str) -> list[str]:
    """What the README section under `heading` fails to document of `settings`: each field's
    environment variable must appear there as `NAME`, and each field needs a description
    (the table's "meaning" column is taken from it)."""
    section = readme_section(heading)
    prefix = settings.model_config.get("env_prefix") or ""
    problems: list[str] = []
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        variable = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
        if f"`{variable}`" not in section:
            problems.append(f"{variable} is not in README's {heading!r} section")
        if not field.description:
            problems.append(f"{settings.__name__}.{name} has no description")
    return problems
