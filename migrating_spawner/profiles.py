"""Profiles: what a user can choose on the spawn page. Pure functions, no I/O but `which`."""

from __future__ import annotations

import html
import shutil
from typing import Any

DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "slug": "lab-small",
        "display_name": "JupyterLab, small",
        "description": "1 CPU, 2 GB, spot host",
        "instance_type": "small",
        "default": True,
    },
    {
        "slug": "lab-medium",
        "display_name": "JupyterLab, medium",
        "description": "2 CPUs, 4 GB, spot host",
        "instance_type": "medium",
    },
    {
        "slug": "rstudio",
        "display_name": "RStudio",
        "description": "RStudio Server through jupyter-rsession-proxy",
        "instance_type": "small",
        "default_url": "/rstudio/",
        "requires": "rserver",
    },
]


class ProfileError(ValueError):
    """The user asked for a profile that does not exist or is not offered here."""


def available_profiles(profiles: list[dict[str, Any]], which=shutil.which) -> list[dict[str, Any]]:
    """Profiles whose `requires` command exists (RStudio only where `rserver` is installed)."""
    return [p for p in profiles if not p.get("requires") or which(p["requires"])]


def choose_profile(profiles: list[dict[str, Any]], slug: str | None) -> dict[str, Any]:
    """The profile named `slug`, or the default one when no slug is given."""
    if not profiles:
        return {}
    if not slug:
        return next((p for p in profiles if p.get("default")), profiles[0])
    for profile in profiles:
        if profile["slug"] == slug:
            return profile
    offered = ", ".join(p["slug"] for p in profiles)
    raise ProfileError(f"Unknown profile {slug!r}. Choose one of: {offered}.")


def render_form(profiles: list[dict[str, Any]]) -> str:
    """The spawn page's form: one radio button a profile."""
    if len(profiles) < 2:
        return ""
    default = choose_profile(profiles, None)["slug"]
    rows = []
    for p in profiles:
        slug = html.escape(p["slug"])
        checked = " checked" if p["slug"] == default else ""
        rows.append(
            f'<label class="form-check" style="display:block;margin:.5em 0">'
            f'<input class="form-check-input" type="radio" name="profile" value="{slug}"{checked}>'
            f" <strong>{html.escape(p.get('display_name', p['slug']))}</strong>"
            f" <small>{html.escape(p.get('description', ''))}</small></label>"
        )
    return '<div class="form-group">' + "\n".join(rows) + "</div>"


def options_from_form(formdata: dict[str, list[str]]) -> dict[str, Any]:
    return {"profile": (formdata.get("profile") or [""])[0]}
