#!/usr/bin/env python3
"""A small `helm` for this repository: the helm commands the chart's README shows, on Helm v4's
own code (the PyPI package helm-python-sdk, which carries Helm as a shared library), for
machines that have no helm binary.

    scripts/helm-deps.sh                      # once: installs the SDK in a cached virtualenv
    tests/helm.py lint charts/statecar
    tests/helm.py template statecar charts/statecar -n statecar-system --set logLevel=debug
    tests/helm.py install statecar charts/statecar -n statecar-system --create-namespace
    tests/helm.py upgrade statecar charts/statecar -n statecar-system -f my-values.yaml
    tests/helm.py list -n statecar-system
    tests/helm.py test statecar -n statecar-system
    tests/helm.py uninstall statecar -n statecar-system

The cluster is the one of KUBECONFIG (or --kubeconfig). As helm does, output goes to stdout,
problems go to stderr as `Error: ...`, and the exit code is 0 on success and 1 otherwise.
Flags the SDK has no equivalent for are not offered rather than ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

HERE = Path(__file__).resolve().parent


def _venv_python() -> Path:
    if os.environ.get("STATECAR_HELM_VENV"):
        return Path(os.environ["STATECAR_HELM_VENV"]) / "bin" / "python"
    cache = os.environ.get("STATECAR_CACHE") or str(Path.home() / ".cache" / "statecar")
    return Path(cache) / "helm-venv" / "bin" / "python"


try:
    import helm_python as helm
except ImportError:
    venv_python = _venv_python()
    if venv_python.exists() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    sys.stderr.write(
        "Error: the Helm SDK (PyPI helm-python-sdk) is not installed; "
        f"run {HERE.parent / 'scripts' / 'helm-deps.sh'}\n"
    )
    sys.exit(1)


class HelmCliError(Exception):
    """An error this wrapper reports itself, as `Error: ...`."""


# ------------------------------------------------------------------------------------------------
# Values: -f, --set, --set-string, --set-json, --set-file, merged as helm merges them
# ------------------------------------------------------------------------------------------------


def merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `src` into `dst` (maps merge, anything else is replaced), as helm does for
    successive -f files and --set flags."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def user_values(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in args.values or []:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as e:
            raise HelmCliError(f"open {path}: {e.strerror.lower() if e.strerror else e}") from e
        try:
            parsed = helm.values_from_yaml(text) if text.strip() else {}
        except helm.HelmError as e:
            raise HelmCliError(f"failed to parse {path}: {e.detail}") from e
        merge(values, parsed or {})
    parsers = [
        ("set_json", helm.parse_set_json, "--set-json"),
        ("set", helm.parse_set_string, "--set"),
        ("set_string", helm.parse_set_string_values, "--set-string"),
        ("set_file", helm.parse_set_file, "--set-file"),
    ]
    for attr, parse, flag in parsers:
        for expression in getattr(args, attr, None) or []:
            try:
                merge(values, parse(expression))
            except helm.HelmError as e:
                raise HelmCliError(f"failed parsing {flag} data: {e.detail}") from e
    return values


def add_values_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--values", action="append", metavar="FILE",
                   help="values file (repeatable; later ones win)")
    p.add_argument("--set", action="append", metavar="K=V", help="set values (a=1,b.c=x)")
    p.add_argument("--set-string", action="append", metavar="K=V", help="set STRING values")
    p.add_argument("--set-json", action="append", metavar="K=JSON", help="set JSON values")
    p.add_argument("--set-file", action="append", metavar="K=PATH",
                   help="set values from the contents of files")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """A Go duration (`5m0s`, `90s`, `1h`) or plain seconds, in whole seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise HelmCliError(f'invalid argument "{text}" for "--timeout" flag: invalid duration')
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return max(1, round(sum(float(n) * scale[u] for n, u in parts)))


def config(args: argparse.Namespace) -> helm.Config:
    return helm.Config(
        kubeconfig_path=args.kubeconfig,
        kube_context=args.kube_context,
        namespace=args.namespace,
    )


def chart_path(ref: str) -> str:
    """Local chart directories and archives only (no repositories here)."""
    if not Path(ref).exists():
        raise HelmCliError(f"path \"{ref}\" not found")
    return ref


def when(stamp: str | None) -> str:
    """`2026-12-01T23:24:16Z` as helm prints LAST DEPLOYED (`Tue Dec  1 23:24:16 2026`)."""
    if not stamp:
        return ""
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return stamp
    return t.strftime("%a %b ") + f"{t.day:2d}" + t.strftime(" %H:%M:%S %Y")


def updated(stamp: str | None) -> str:
    """The UPDATED column of `helm list`."""
    if not stamp:
        return ""
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return stamp
    return t.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


def print_release(rel: dict[str, Any], *, show_notes: bool = True, test_suite: str = "None") -> None:
    print(f"NAME: {rel.get('name', '')}")
    print(f"LAST DEPLOYED: {when(rel.get('deployed_at'))}")
    print(f"NAMESPACE: {rel.get('namespace', '')}")
    print(f"STATUS: {rel.get('status', '')}")
    print(f"REVISION: {rel.get('revision', '')}")
    if test_suite:
        print(f"TEST SUITE: {test_suite}")
    notes = (rel.get("notes") or "").strip("\n")
    if show_notes and notes:
        print("NOTES:")
        print(notes)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("\t".join(cells).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# template: helm's output order
# ------------------------------------------------------------------------------------------------

# helm's InstallOrder (pkg/release/util/kind_sorter.go); unknown kinds go last, by name.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]
DOC_SPLIT = re.compile(r"(?m)^---[ \t]*(?:#.*)?$")


def documents(rendered: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(source path, text, parsed head) of every non-empty document, partials and NOTES left
    out."""
    docs = []
    for path in sorted(rendered):
        base = path.rsplit("/", 1)[-1]
        if base.startswith("_") or base == "NOTES.txt":
            continue
        for text in DOC_SPLIT.split(rendered[path]):
            if not text.strip() or all(
                not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
            ):
                continue
            try:
                head = helm.values_from_yaml(text) or {}
            except helm.HelmError:
                head = {}
            docs.append((path, text.strip("\n"), head))
    return docs


def is_hook(head: dict[str, Any]) -> bool:
    annotations = (head.get("metadata") or {}).get("annotations") or {}
    return "helm.sh/hook" in annotations


def order_key(doc: tuple[str, str, dict[str, Any]]) -> tuple[int, str, str]:
    _, _, head = doc
    kind = str(head.get("kind", ""))
    rank = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
    return rank, kind if rank == len(INSTALL_ORDER) else "", str(
        (head.get("metadata") or {}).get("name", "")
    )


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------


def cmd_lint(args: argparse.Namespace) -> int:
    values = user_values(args)
    failed = 0
    charts = args.charts or ["."]
    for ref in charts:
        print(f"==> Linting {ref}")
        report = helm.lint(
            chart_path(ref),
            values or None,
            strict=args.strict or None,
            namespace=args.namespace,
            kube_version=args.kube_version,
        )
        names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
        worst = 0
        for m in report.get("messages") or []:
            severity = int(m.get("severity", 0))
            worst = max(worst, severity)
            if args.quiet and severity < 2:
                continue
            error = str(m.get("error", "")).rstrip("\n")
            print(f"[{names.get(severity, 'UNKNOWN')}] {m.get('path', '')}: {error}")
        if worst >= 3 or (args.strict and worst >= 2) or report.get("errors") and worst == 0:
            failed += 1
        print()
    summary = f"{len(charts)} chart(s) linted, {failed} chart(s) failed"
    if failed:
        raise HelmCliError(summary)
    print(summary)
    return 0


def cmd_template(args: argparse.Namespace) -> int:
    if args.chart is None:
        name, ref = "release-name", args.name
    else:
        name, ref = args.name, args.chart
    values = user_values(args)
    with helm.Chart.load(chart_path(ref)) as chart:
        rendered = chart.render(
            values,
            name=name,
            namespace=args.namespace or "default",
            is_install=not args.is_upgrade,
            is_upgrade=args.is_upgrade,
        )
        crds = chart.crds if args.include_crds else []
        chart_name = chart.name
    docs = documents(rendered)
    if args.show_only:
        wanted = {s.strip("/") for s in args.show_only}
        missing = [
            s for s in wanted if not any(p == s or p.endswith("/" + s) for p, _, _ in docs)
        ]
        if missing:
            raise HelmCliError(f"could not find template {missing[0]} in chart")
        docs = [d for d in docs if any(d[0] == s or d[0].endswith("/" + s) for s in wanted)]
    plain = sorted((d for d in docs if not is_hook(d[2])), key=order_key)
    hooks = [d for d in docs if is_hook(d[2])]
    out = []
    for crd in crds:
        source = f"{chart_name}/{crd.get('name', '')}"
        out.append(f"---\n# Source: {source}\n{crd.get('data', '').strip(chr(10))}\n")
    for path, text, _ in plain + hooks:
        out.append(f"---\n# Source: {path}\n{text}\n")
    sys.stdout.write("".join(out))
    return 0


def release_opts(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "namespace": args.namespace,
        "timeout": parse_duration(args.timeout),
        "wait": "watcher" if args.wait else None,
        "dry_run": args.dry_run,
        "rollback_on_failure": args.atomic,
        "description": args.description,
    }


def print_installed(rel: dict[str, Any], dry_run: str | None) -> None:
    if not dry_run or dry_run == "none":
        print_release(rel)
        return
    # As helm prints a dry run: the manifest, then the notes.
    print_release(rel, show_notes=False)
    print("MANIFEST:")
    sys.stdout.write(rel.get("manifest") or "")
    notes = (rel.get("notes") or "").strip("\n")
    if notes:
        print("\nNOTES:")
        print(notes)


def cmd_install(args: argparse.Namespace) -> int:
    helm.validate_release_name(args.name)
    with config(args) as cfg:
        rel = cfg.install(
            chart_path(args.chart),
            args.name,
            user_values(args),
            create_namespace=args.create_namespace,
            **release_opts(args),
        )
    print_installed(rel, args.dry_run)
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    values = user_values(args)
    with config(args) as cfg:
        if args.install:
            try:
                history = cfg.history(args.name, max_revisions=1)
            except helm.HelmNotFoundError:
                history = []
            if not history:
                print(f'Release "{args.name}" does not exist. Installing it now.')
                rel = cfg.install(
                    chart_path(args.chart),
                    args.name,
                    values,
                    create_namespace=args.create_namespace,
                    **release_opts(args),
                )
                print_installed(rel, args.dry_run)
                return 0
        rel = cfg.upgrade(
            chart_path(args.chart),
            args.name,
            values,
            reuse_values=args.reuse_values,
            reset_values=args.reset_values,
            cleanup_on_fail=args.cleanup_on_fail,
            max_history=args.history_max,
            **release_opts(args),
        )
    print(f'Release "{args.name}" has been upgraded. Happy Helming!')
    print_installed(rel, args.dry_run)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        for name in args.names:
            res = cfg.uninstall(
                name,
                keep_history=args.keep_history,
                timeout=parse_duration(args.timeout),
                dry_run=args.dry_run,
                ignore_not_found=args.ignore_not_found,
                wait="watcher" if args.wait else None,
                description=args.description,
            )
            if res.get("info"):
                print(res["info"])
            print(f'release "{name}" uninstalled')
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        releases = cfg.list(
            all_states=args.all,
            all_namespaces=args.all_namespaces,
            limit=args.max,
            offset=args.offset,
            name_filter=args.filter,
        )
    if args.short:
        for r in releases:
            print(r.get("name", ""))
        return 0
    rows = [
        {
            "name": r.get("name", ""),
            "namespace": r.get("namespace", ""),
            "revision": str(r.get("revision", "")),
            "updated": updated(r.get("deployed_at")),
            "status": r.get("status", ""),
            "chart": f"{r.get('chart_name', '')}-{r.get('chart_version', '')}",
            "app_version": r.get("app_version", ""),
        }
        for r in releases
    ]
    if args.output == "json":
        print(json.dumps(rows))
        return 0
    header = ["NAME", "NAMESPACE", "REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION"]
    print(table([header] + [list(r.values()) for r in rows]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        rel = cfg.status(args.name, revision=args.revision)
    print_release(rel, show_notes=True)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        failure: helm.HelmError | None = None
        result: dict[str, Any] = {}
        try:
            result = cfg.test(
                args.name,
                timeout=parse_duration(args.timeout),
                logs=args.logs,
                include_names=args.filter_include or None,
                exclude_names=args.filter_exclude or None,
            )
        except helm.HelmError as e:
            failure = e
        stored = cfg.get_all(args.name)
    rel = result.get("release") or stored.get("summary") or {}
    print_release(rel, show_notes=False, test_suite="")
    for hook in stored.get("hooks") or []:
        if "test" not in (hook.get("events") or []):
            continue
        run = hook.get("last_run") or {}
        print(f"TEST SUITE:     {hook.get('name', '')}")
        print(f"Last Started:   {when(run.get('started_at'))}")
        print(f"Last Completed: {when(run.get('completed_at'))}")
        print(f"Phase:          {run.get('phase', '')}")
    if result.get("logs"):
        print(result["logs"].rstrip("\n"))
    if failure is not None:
        raise failure
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        if args.what == "values":
            vals = cfg.get_values(args.name, all_values=args.all, revision=args.revision)
            if args.output != "json":
                print("COMPUTED VALUES:" if args.all else "USER-SUPPLIED VALUES:")
            print(json.dumps(vals, indent=2 if args.output != "json" else None))
            return 0
        if args.what == "hooks":
            stored = cfg.get_all(args.name, revision=args.revision)
            for hook in stored.get("hooks") or []:
                print(f"---\n# Source: {hook.get('path', '')}\n{hook.get('manifest', '').strip()}")
            return 0
        rel = cfg.status(args.name, revision=args.revision)
    if args.what == "manifest":
        sys.stdout.write(rel.get("manifest") or "")
    else:
        print("NOTES:")
        print((rel.get("notes") or "").rstrip("\n"))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        revisions = cfg.history(args.name, max_revisions=args.max)
    rows = [["REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION", "DESCRIPTION"]]
    for r in revisions:
        rows.append([
            str(r.get("revision", "")),
            when(r.get("deployed_at")),
            str(r.get("status", "")),
            f"{r.get('chart_name', '')}-{r.get('chart_version', '')}",
            str(r.get("app_version", "")),
            str(r.get("description", "")),
        ])
    print(table(rows))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    with config(args) as cfg:
        cfg.rollback(
            args.name,
            version=args.revision,
            timeout=parse_duration(args.timeout),
            wait="watcher" if args.wait else None,
            dry_run="client" if args.dry_run else None,
        )
    print("Rollback was a success! Happy Helming!")
    return 0


def cmd_version(_args: argparse.Namespace) -> int:
    print(
        f'version.BuildInfo{{Version:"{helm.helm_sdk_version()}", '
        f'HelmPythonSDK:"{helm.__version__}", HelmC:"{helm.helm_c_version()}"}}'
    )
    return 0


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with helm's `Error: ...` and exit code 1 for usage errors."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.write(f"Run '{self.prog} --help' for usage.\n")
        sys.exit(1)


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace scope for this request")
    common.add_argument("--kubeconfig", help="path to the kubeconfig file (default: KUBECONFIG)")
    common.add_argument("--kube-context", help="name of the kubeconfig context to use")
    common.add_argument("--debug", action="store_true", help="enable verbose output")

    p = Parser(prog="helm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def command(name: str, func: Any, help_text: str) -> Parser:
        c = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        c.set_defaults(func=func)
        return c

    c = command("lint", cmd_lint, "examine a chart for possible issues")
    c.add_argument("charts", nargs="*", metavar="CHART")
    c.add_argument("--strict", action="store_true", help="fail on lint warnings")
    c.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    c.add_argument("--kube-version", help="Kubernetes version used for capabilities")
    add_values_flags(c)

    c = command("template", cmd_template, "locally render templates")
    c.add_argument("name", metavar="[NAME]")
    c.add_argument("chart", nargs="?", metavar="CHART")
    c.add_argument("--include-crds", action="store_true", help="include CRDs in the output")
    c.add_argument("-s", "--show-only", action="append", metavar="TEMPLATE",
                   help="only show manifests rendered from the given templates")
    c.add_argument("--is-upgrade", action="store_true", help="set .Release.IsUpgrade")
    add_values_flags(c)

    def release_flags(c: Parser) -> None:
        c.add_argument("--wait", action="store_true",
                       help="wait until the resources are ready (never, on a cluster without nodes)")
        c.add_argument("--timeout", default="5m0s", help="time to wait for any one operation")
        c.add_argument("--dry-run", nargs="?", const="client", choices=["client", "server", "none"])
        c.add_argument("--atomic", "--rollback-on-failure", dest="atomic", action="store_true",
                       help="roll back (install: uninstall) when the operation fails")
        c.add_argument("--description", help="custom description")
        add_values_flags(c)

    c = command("install", cmd_install, "install a chart")
    c.add_argument("name", metavar="NAME")
    c.add_argument("chart", metavar="CHART")
    c.add_argument("--create-namespace", action="store_true", help="create the release namespace")
    release_flags(c)

    c = command("upgrade", cmd_upgrade, "upgrade a release")
    c.add_argument("name", metavar="RELEASE")
    c.add_argument("chart", metavar="CHART")
    c.add_argument("-i", "--install", action="store_true", help="install if it does not exist")
    c.add_argument("--create-namespace", action="store_true", help="with --install")
    c.add_argument("--reuse-values", action="store_true", help="reuse the last release's values")
    c.add_argument("--reset-values", action="store_true", help="reset to the chart's defaults")
    c.add_argument("--cleanup-on-fail", action="store_true")
    c.add_argument("--history-max", type=int, default=10, help="revisions kept (0: no limit)")
    release_flags(c)

    c = command("uninstall", cmd_uninstall, "uninstall a release")
    c.add_argument("names", nargs="+", metavar="RELEASE_NAME")
    c.add_argument("--keep-history", action="store_true")
    c.add_argument("--ignore-not-found", action="store_true")
    c.add_argument("--wait", action="store_true", help="wait until every resource is deleted")
    c.add_argument("--timeout", default="5m0s")
    c.add_argument("--dry-run", action="store_true")
    c.add_argument("--description")

    c = command("list", cmd_list, "list releases")
    c.add_argument("-A", "--all-namespaces", action="store_true")
    c.add_argument("-a", "--all", action="store_true", help="releases in every state")
    c.add_argument("--filter", help="a regular expression on release names")
    c.add_argument("-m", "--max", type=int, default=256)
    c.add_argument("--offset", type=int)
    c.add_argument("-q", "--short", action="store_true")
    c.add_argument("-o", "--output", choices=["table", "json"], default="table")

    c = command("status", cmd_status, "display the status of a release")
    c.add_argument("name", metavar="RELEASE_NAME")
    c.add_argument("--revision", type=int)

    c = command("test", cmd_test, "run the tests of a release")
    c.add_argument("name", metavar="RELEASE")
    c.add_argument("--timeout", default="5m0s")
    c.add_argument("--logs", action="store_true", help="print the test pods' logs")
    c.add_argument("--filter", dest="filter_include", action="append", metavar="NAME",
                   help="only the test hooks with this name (repeatable)")
    c.add_argument("--exclude", dest="filter_exclude", action="append", metavar="NAME")

    c = command("get", cmd_get, "download information about a release")
    c.add_argument("what", choices=["manifest", "notes", "values", "hooks"])
    c.add_argument("name", metavar="RELEASE_NAME")
    c.add_argument("--revision", type=int)
    c.add_argument("-a", "--all", action="store_true", help="values: all computed values")
    c.add_argument("-o", "--output", choices=["table", "json"], default="table")

    c = command("history", cmd_history, "fetch release history")
    c.add_argument("name", metavar="RELEASE_NAME")
    c.add_argument("--max", type=int, default=256)

    c = command("rollback", cmd_rollback, "roll back a release to a previous revision")
    c.add_argument("name", metavar="RELEASE")
    c.add_argument("revision", nargs="?", type=int)
    c.add_argument("--timeout", default="5m0s")
    c.add_argument("--wait", action="store_true")
    c.add_argument("--dry-run", action="store_true")

    command("version", cmd_version, "print the Helm version")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 1
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    helm.enable_logging(logging.DEBUG if args.debug else logging.WARNING)
    try:
        return int(args.func(args))
    except HelmCliError as e:
        sys.stderr.write(f"Error: {e}\n")
    except helm.HelmError as e:
        sys.stderr.write(f"Error: {e.detail.rstrip()}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
