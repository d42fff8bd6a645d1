"""Write docs/configuration.md: every `config=True` trait of the project's classes.

    python docs/gen_config_reference.py          # (re)write docs/configuration.md
    python docs/gen_config_reference.py --check  # exit 1 if the file is out of date

`make docs` runs the first; tests/unit/test_config_reference.py the second's comparison.
Each class lists the traits it defines itself, in the order of its source, with type,
default and help text; defaults computed at run time (`@default`) are shown as the
expression that computes them. Traits inherited from JupyterHub, traitlets or
jupyter_scheduler are not repeated; the ones whose default a class changes are named.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pprint
import sys
import textwrap
from pathlib import Path

from traitlets import Enum, Instance, Type
from traitlets.traitlets import Container, DefaultHandler, Dict, TraitType

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "configuration.md"
PACKAGES = ("migrating_spawner", "proxy_plugin", "kernel_provisioner")

# (module, class, where it is configured); in the page's order
CLASSES = [
    (
        "migrating_spawner.spawner",
        "MigratingSpawner",
        '`c.JupyterHub.spawner_class = "migrating"`; set as `c.MigratingSpawner.NAME` in '
        "`jupyterhub_config.py`. JupyterHub's own `Spawner` traits (`cmd`, `environment`, "
        "`http_timeout`, ...) apply as usual.",
    ),
    (
        "proxy_plugin.proxy",
        "MigratingProxy",
        '`c.JupyterHub.proxy_class = "migrating"`; set as `c.MigratingProxy.NAME`. '
        "`ConfigurableHTTPProxy`'s own traits (`command`, `api_url`, `auth_token`, ...) apply "
        "as usual.",
    ),
    (
        "migrating_spawner.controller",
        "MigratingController",
        "One per hub, inside the hub process: the host provider, the checkpoint store, the "
        "move engine and the control API (the `migrate` service). Set as "
        "`c.MigratingController.NAME`.",
    ),
    (
        "migrating_spawner.hosts.base",
        "HostProvider",
        "The traits both providers share. `c.HostProvider.NAME` sets one for whichever "
        "provider `c.MigratingController.provider_class` names; `c.LocalHostProvider.NAME` "
        "or `c.EC2HostProvider.NAME` for that provider only.",
    ),
    (
        "migrating_spawner.hosts.local",
        "LocalHostProvider",
        "The default provider (`local`): hosts are loopback addresses 127.0.0.N on the hub's "
        "machine. Also takes the `HostProvider` traits above.",
    ),
    (
        "migrating_spawner.hosts.ec2",
        "EC2HostProvider",
        "`c.MigratingController.provider_class = "
        '"migrating_spawner.hosts.ec2.EC2HostProvider"` (needs the `ec2` extra, boto3). '
        "Also takes the `HostProvider` traits above.",
    ),
    (
        "migrating_spawner.hosts.cloudevents",
        "CloudEventsChannel",
        "With the ec2 provider: EC2's own events (EventBridge) long-polled from an SQS queue, "
        "beside the agents' notices. Set as `c.CloudEventsChannel.NAME`; off while "
        "`queue_url` is empty.",
    ),
    (
        "migrating_spawner.checkpoint.store",
        "LocalCheckpointStore",
        "The default checkpoint store (`c.MigratingController.store_class`): a folder.",
    ),
    (
        "migrating_spawner.checkpoint.s3",
        "S3CheckpointStore",
        "`c.MigratingController.store_class = "
        '"migrating_spawner.checkpoint.s3.S3CheckpointStore"` (needs boto3): an S3 bucket.',
    ),
    (
        "migrating_spawner.checkpoint.gc",
        "GarbageCollector",
        "Deletes checkpoint chunks no manifest refers to. Set as `c.GarbageCollector.NAME`.",
    ),
    (
        "migrating_spawner.history",
        "ServerHistory",
        "Each server's moves, suspends, resumes, cancels and losses "
        "(`jupyterhub-migrate history`). Set as `c.ServerHistory.NAME`.",
    ),
    (
        "migrating_spawner.batch.submit",
        "JobRunner",
        "The hub's headless notebook jobs (`jupyterhub-migrate submit`, `jobs`). Set as "
        "`c.JobRunner.NAME`.",
    ),
    (
        "migrating_spawner.tcpgateway.gateway",
        "TCPGateway",
        "Stable TCP ports of user servers through HAProxy (`jupyterhub-migrate gateway`). Set "
        "as `c.TCPGateway.NAME`.",
    ),
    (
        "kernel_provisioner.settings",
        "KernelHostSettings",
        "Kernels that move on their own under a gateway. Not hub config: these are the "
        "`config` of a kernelspec, `metadata.kernel_provisioner.config` for "
        "`MigratingProvisioner` (`migrating-provisioner`: jupyter_server 2, Kernel Gateway 3) "
        "or `metadata.process_proxy.config` for `MigratingProcessProxy` (Enterprise Gateway "
        "3.3, which also takes `relay_ip` there); `MigratingProvisioner` derives from this "
        "class, so `c.MigratingProvisioner.NAME` in the gateway's or server's config works "
        "too.",
    ),
    (
        "migrating_spawner.batch.scheduler",
        "MigratingScheduler",
        "Inside each user server (jupyter-scheduler's `SchedulerApp.scheduler_class`, set by "
        "the package's `jupyter_server_config.d`): set as `c.MigratingScheduler.NAME` in the "
        "server's Jupyter config. Needs the `lab` extra (jupyter-scheduler).",
    ),
    (
        "migrating_spawner.service.page",
        "ServiceOAuth",
        "The control service's JupyterHub authentication (a `HubOAuth`); it defines no "
        "traits of its own, only defaults. Configurable as `c.HubOAuth.NAME` or "
        "`c.ServiceOAuth.NAME`.",
    ),
]


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in PACKAGES


def _type_name(trait: TraitType) -> str:
    name = type(trait).__name__
    if isinstance(trait, Enum):
        text = "one of " + ", ".join(f"`{v!r}`" for v in trait.values)
    elif isinstance(trait, Dict):  # before Instance: containers are Instances
        inner = trait._value_trait
        text = f"Dict of {type(inner).__name__}" if inner is not None else name
    elif isinstance(trait, Container):
        inner = getattr(trait, "_trait", None)
        text = f"{name} of {type(inner).__name__}" if inner is not None else name
    elif isinstance(trait, (Type, Instance)):
        klass = trait.klass if isinstance(trait.klass, str) else trait.klass.__name__
        kind = "a subclass of" if isinstance(trait, Type) else "an instance of"
        text = f"{name} ({kind} `{klass.rsplit('.', 1)[-1]}`)"
    else:
        text = name
    return text + (", or None" if trait.allow_none else "")


def _computed(handler: DefaultHandler) -> str:
    """The expression a one-line `@default` returns, else where it is computed."""
    func = handler.func
    where = f"`{func.__qualname__}`"
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return f"computed by {where}"
    body = tree.body[0].body  # type: ignore[attr-defined]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # a docstring
    if len(body) == 1 and isinstance(body[0], ast.Return) and body[0].value is not None:
        expr = body[0].value
        try:
            return f"`{ast.literal_eval(expr)!r}`"
        except ValueError:
            return f"computed: `{ast.unparse(expr)}`"
    return f"computed by {where}"


def _default(trait: TraitType) -> tuple[str, str]:
    """(inline text, block) of a trait's static default; block is '' when it fits inline."""
    try:
        text = trait.default_value_repr()
    except AssertionError:  # traitlets' Type with a None default
        text = repr(trait.default_value)
    value = trait.make_dynamic_default() if isinstance(trait, (Container, Dict)) else None
    value = trait.default_value if value is None else value
    if len(text) <= 70 and "\n" not in text:
        return f"`{text}`", ""
    if isinstance(value, str):
        return "below", "```text\n" + value.rstrip("\n") + "\n```"
    return "below", "```python\n" + pprint.pformat(value, width=88, sort_dicts=False) + "\n```"


def _help(trait: TraitType) -> str:
    text = inspect.cleandoc(trait.help or "")
    return text or "(no help text)"


def _indent(text: str) -> str:
    return "\n".join(("  " + line) if line.strip() else "" for line in text.splitlines())


def _handlers(cls: type) -> dict[str, DefaultHandler]:
    return {v.trait_name: v for v in vars(cls).values() if isinstance(v, DefaultHandler)}


def render_class(cls: type, where: str) -> str:
    intro = textwrap.fill(
        f"`{cls.__module__}.{cls.__name__}`. {where}",
        width=92,
        break_long_words=False,
        break_on_hyphens=False,
    )
    lines = [f"## {cls.__name__}", "", intro, ""]
    handlers = _handlers(cls)
    own = [
        (name, trait)
        for name, trait in vars(cls).items()
        if isinstance(trait, TraitType) and trait.metadata.get("config")
    ]
    for name, trait in own:
        if name in handlers:
            default, block = _computed(handlers[name]), ""
        else:
            default, block = _default(trait)
        lines += [f"- `{name}`: {_type_name(trait)}, default {default}", ""]
        lines += [_indent(_help(trait)), ""]
        if block:
            lines += [_indent(block), ""]
    changed = []
    for name, handler in handlers.items():
        trait = cls.class_traits().get(name)
        if name in dict(own) or trait is None or not trait.metadata.get("config"):
            continue
        owner = next(k for k in cls.__mro__ if name in vars(k))
        changed.append(f"- `{owner.__name__}.{name}`: {_computed(handler)}")
    if changed:
        lines += ["Inherited options whose default this class changes:", ""]
        lines += changed + [""]
    if not own and not changed:
        lines += ["(no options of its own)", ""]
    return "\n".join(lines)


HEADER = """\
# Configuration reference

<!-- Generated by docs/gen_config_reference.py from the traits' own help: do not edit by
hand; run `make docs` (tests/unit/test_config_reference.py fails when this is stale). -->

Every option of jupyterhub-migrating-spawner is a traitlets trait with `config=True`. The
hub's options go in `jupyterhub_config.py` as `c.CLASS.NAME = value`; a class's options
also apply to its subclasses (traitlets' config sections follow the class hierarchy). Each
class below lists the options it defines itself: type, default (a computed default shows
the expression that computes it) and help text. Options of the JupyterHub, traitlets and
jupyter-scheduler classes these derive from are not repeated here; see their own
documentation. How to run it: [operations.md](operations.md); how it works:
[architecture.md](architecture.md).

"""


def render() -> str:
    sections = []
    toc = []
    for module, name, where in CLASSES:
        cls = getattr(importlib.import_module(module), name)
        assert _ours(cls), cls
        sections.append(render_class(cls, where))
        toc.append(f"- [{name}](#{name.lower()})")
    return HEADER + "\n".join(toc) + "\n\n" + "\n".join(sections).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run make docs", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
