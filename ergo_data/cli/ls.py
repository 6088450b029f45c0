"""``ergo ls push|pull|serve``: review samples in a real Label Studio server.

    export LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=...
    ergo ls push out/demo --project "demo review" --where "category = 'ocr'" --limit 50
    ergo ls pull --project "demo review" --out out/demo-review

Errors (server down, wrong token, timeouts, bad input) are printed as one sentence that names the URL
or the item and what to do; the exit code is 2 for a usage or configuration error (no token, a bad URL,
unset server credentials) and 1 for a failure while working (server unreachable, items not converted).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ergo_data.cli.common import FAILURE_EXIT, USAGE_EXIT, cli_errors, console, err, fail

URL_HELP = "Label Studio URL (env LABEL_STUDIO_URL)"
KEY_HELP = "API token (env LABEL_STUDIO_API_KEY)"
UrlOption = Annotated[str, typer.Option("--url", envvar="LABEL_STUDIO_URL", help=URL_HELP)]
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="LABEL_STUDIO_API_KEY", help=KEY_HELP)]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="seconds per request")]


def _connection(url: str, api_key: str | None, timeout: float):
    from ergo_data.labelstudio.client import Connection

    with cli_errors(code=USAGE_EXIT):  # no token, a URL that is not http(s)
        return Connection(url, api_key or "", timeout)


def push(
    samples_dir: Annotated[
        Path, typer.Argument(help="output directory of `ergo run` (reads DIR/data/*.parquet)")
    ],
    project: Annotated[
        str, typer.Option("--project", "-p", help="project title (created if missing, else reused)")
    ],
    where: Annotated[
        str | None, typer.Option("--where", help="DuckDB WHERE over `samples`, e.g. \"split = 'val'\"")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="push at most N samples (ordered by id)")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8080",
    api_key: KeyOption = None,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Import samples as tasks (boxes as predictions); samples already in the project are skipped."""
    from ergo_data.labelstudio.push import push as do_push

    conn = _connection(url, api_key, timeout)
    with cli_errors(usage=(ValueError,)):  # no samples, a bad --where
        report = do_push(samples_dir, project, conn, where=where, limit=limit, log=console.print)
    table = Table(title=f"push to {report.project!r} (project id {report.project_id}) at {report.url}")
    for col in ("selected", "already there", "created", "images uploaded", "images reused", "failed"):
        table.add_column(col, justify="right")
    table.add_row(
        *map(
            str,
            (
                report.selected,
                report.already_present,
                report.created,
                report.images_uploaded,
                report.images_reused,
                len(report.failed),
            ),
        )
    )
    console.print(table)
    console.print(f"open {report.url}/projects/{report.project_id}/data to annotate")
    if report.failed:
        for sid, why in report.failed:
            err.print(f"  not pushed: {sid}: {why}", highlight=False)
        fail(f"{len(report.failed)} samples were not pushed (listed above); fix them and push again", FAILURE_EXIT)


def pull(
    project: Annotated[str, typer.Option("--project", "-p", help="project title")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="writes OUT/data/*.parquet, OUT/labels.parquet, OUT/pull.json")
    ],
    url: UrlOption = "http://127.0.0.1:8080",
    api_key: KeyOption = None,
    timeout: TimeoutOption = 60.0,
) -> None:
    """Export annotations: reviewed Samples (human boxes, source=human) and the `labels` table."""
    from ergo_data.labelstudio.pull import pull as do_pull

    conn = _connection(url, api_key, timeout)
    with cli_errors():
        report = do_pull(project, out, conn, log=console.print)
    console.print(
        f"{report.tasks} tasks: {report.samples} reviewed samples -> {out}/data, "
        f"{report.labels} labels -> {out}/labels.parquet"
    )
    if report.unannotated:
        shown = ", ".join(report.unannotated[:20]) + (" ..." if len(report.unannotated) > 20 else "")
        console.print(
            f"[yellow]{len(report.unannotated)} tasks have no submitted annotation[/] (not in data/; "
            f"all ids in {out}/pull.json): {shown}",
            highlight=False,
        )
    if report.errors:
        for line in report.errors:
            err.print(f"  {line}", highlight=False)
        fail(
            f"{len(report.errors)} tasks could not be converted (listed above); fix them in Label Studio "
            "and pull again",
            FAILURE_EXIT,
        )


def serve(
    port: Annotated[
        int, typer.Option("--port", help="port (must be free: Label Studio would silently take another)")
    ] = 8080,
    host: Annotated[str, typer.Option("--host", help="interface to listen on")] = "127.0.0.1",
    data_dir: Annotated[Path, typer.Option("--data-dir", help="database, uploads, secret key")] = Path(
        ".ls-data"
    ),
    document_root: Annotated[
        Path | None, typer.Option("--document-root", help="enable local-files serving below it")
    ] = None,
    venv: Annotated[
        Path | None, typer.Option("--venv", help="the server's venv (default: .venv-ls of the repo)")
    ] = None,
    start_timeout: Annotated[
        float, typer.Option("--start-timeout", help="seconds to wait for /health")
    ] = 600.0,
) -> None:
    """Start Label Studio; admin + token from LABEL_STUDIO_USERNAME/_PASSWORD/_USER_TOKEN. Ctrl-C stops it."""
    from ergo_data.labelstudio.server import DEFAULT_VENV, LabelStudioServer, ServerSettings, label_studio_exe

    with cli_errors(code=USAGE_EXIT):  # unset credentials, no server venv
        settings = ServerSettings.from_env(
            data_dir.resolve(), host, port, document_root.resolve() if document_root else None
        )
        server = LabelStudioServer(settings, venv or DEFAULT_VENV)
        label_studio_exe(server.venv)
    with cli_errors():
        console.print(f"starting Label Studio on {settings.url} (data in {settings.data_dir}) ...")
        server.start(timeout=start_timeout)
    console.print(f"[bold green]Label Studio is up:[/] {server.url}  (log: {server.log_path})")
    console.print(f"  export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=$LABEL_STUDIO_USER_TOKEN")
    console.print(
        "  (admin account and token are set on the first start of a data dir only)  Ctrl-C stops it."
    )

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        code = server.proc.wait()
        fail(f"Label Studio exited on its own with code {code}; log {server.log_path}:\n{server.log_tail()}",
             FAILURE_EXIT)
    except KeyboardInterrupt:
        console.print("stopping Label Studio ...")
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    """Add the ``ls`` sub-command group to the ``ergo`` app."""
    ls_app = typer.Typer(help="Review samples in Label Studio: serve, push, pull.", no_args_is_help=True)
    ls_app.command("push")(push)
    ls_app.command("pull")(pull)
    ls_app.command("serve")(serve)
    app.add_typer(ls_app, name="ls")
