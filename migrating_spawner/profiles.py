"""Profiles: what a user can choose on the spawn page. Pure functions, no I/O but `which`
and `find_spec` (is a command on PATH, is a Python package installed)."""

from __future__ import annotations

import html
import shutil
from importlib.util import find_spec
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
        "slug": "shiny",
        "display_name": "Shiny app",
        "description": "your Shiny app (~/shiny-app) at /user/NAME/shiny/, R on a spot host",
        "instance_type": "small",
        "default_url": "/shiny/",
        "requires": "Rscript",
    },
    {
        # RStudio Server (rserver) through jupyter-rsession-proxy; its sessions are
        # suspended at a move and resume on the new host (singleuser/apps.py)
        "slug": "rstudio",
        "display_name": "RStudio",
        "description": "RStudio Server through jupyter-rsession-proxy",
        "instance_type": "small",
        "default_url": "/rstudio/",
        "requires": "rserver",
        "requires_module": "jupyter_rsession_proxy",
    },
    {
        # code-server through jupyter-vscode-proxy; its hot exit keeps unsaved editors
        # under the home (~/.local/share/code-server), so they move with it
        "slug": "vscode",
        "display_name": "VS Code",
        "description": "code-server through jupyter-vscode-proxy",
        "instance_type": "small",
        "default_url": "/vscode/",
        "requires": "code-server",
        "requires_module": "jupyter_vscode_proxy",
    },
    {
        # headless notebook jobs (jupyterhub-migrate submit): not on the spawn page
        "slug": "batch",
        "display_name": "Batch job",
        "description": "a headless notebook job on a spot host of its own",
        "instance_type": "small",
        "batch": True,
    },
]


class ProfileError(ValueError):
    """The user asked for a profile that does not exist or is not offered here."""


def available_profiles(
    profiles: list[dict[str, Any]], which=shutil.which, module=find_spec
) -> list[dict[str, Any]]:
    """Profiles whose `requires` command exists and whose `requires_module` (a Python
    package, e.g. the proxy entry it needs) is installed: RStudio only where `rserver`
    and jupyter-rsession-proxy are."""
    return [
        p
        for p in profiles
        if (not p.get("requires") or which(p["requires"]))
        and (not p.get("requires_module") or module(p["requires_module"]))
    ]


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


def batch_profile(profiles: list[dict[str, Any]], slug: str | None) -> dict[str, Any]:
    """The profile of a headless job: `slug` (any profile offered), else the first batch
    profile (`"batch": True`), else the default one."""
    if slug:
        return choose_profile(profiles, slug)
    return next((p for p in profiles if p.get("batch")), None) or choose_profile(profiles, None)


def render_form(profiles: list[dict[str, Any]], chosen: str | None = None, note: str = "") -> str:
    """The spawn page's form: one radio button a profile (batch profiles are for jobs),
    `chosen` ticked (a suspended server's own profile; the default one if it is gone), and
    `note` above them (what a start of this server does, e.g. that it resumes)."""
    profiles = [p for p in profiles if not p.get("batch")]
    if len(profiles) < 2:
        return ""
    try:
        default = choose_profile(profiles, chosen)["slug"]
    except ProfileError:  # no longer offered
        default = choose_profile(profiles, None)["slug"]
    rows = [f'<p class="alert alert-info">{html.escape(note)}</p>'] if note else []
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
