"""``ergo ls push|pull|serve``: review samples in a real Label Studio server.

    ergo ls serve                              # prints: source .ls-data/credentials.env
    source .ls-data/credentials.env            # LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ...
    ergo ls push out/demo --project "demo review" --where "category = 'ocr'" --limit 50
    ergo ls pull --project "demo review" --out out/demo-review

Errors (server down, wrong token, timeouts, bad input) are printed as one sentence that names the URL
or the item and what to do, and the exit code is non-zero.
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
        report = do_push(samples_dir, project, conn, where=where, limit=limit, log=console.print, quiet=False)
    table = Table(title=f"push to {report.project!r} (project id {report.project_id}) at {report.url}")
    for col in ("selected", "already there", "created", "images uploaded", "images reused", "crops uploaded",
                "failed"):
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
                report.crops_uploaded,
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
        f"{report.tasks} tasks: {report.samples + report.rejected} reviewed: {report.samples} kept -> {out}/data "
        f"({report.needs_review} with needs_review), {report.rejected} rejected -> {out}/rejects; "
        f"{report.labels} labels -> {out}/labels.parquet",
        highlight=False,
    )
    if report.unannotated:
        shown = ", ".join(report.unannotated[:20]) + (" ..." if len(report.unannotated) > 20 else "")
        console.print(
            f"[yellow]{len(report.unannotated)} tasks have no submitted annotation[/] (not in data/; "
            f"all ids in {out}/pull.json): {shown}",
            highlight=False,
        )
    if report.incomplete:
        console.print(
            f"[yellow]{len(report.incomplete)} annotations lack a required answer[/] (not counted as reviewed; "
            f"all in {out}/pull.json): ask the annotator to answer and submit again",
            highlight=False,
        )
        for item in report.incomplete[:20]:
            console.print(f"  {item['id']} by {item['annotator']}: no {', '.join(item['missing'])}", highlight=False)
    console.print(agreement_table(report.agreement))
    if report.errors:
        for line in report.errors:
            err.print(f"  {line}", highlight=False)
        fail(
            f"{len(report.errors)} tasks could not be converted (listed above); fix them in Label Studio "
            "and pull again",
            FAILURE_EXIT,
        )


def agreement_table(agreement: dict) -> Table:
    """Agreement per question (``PullReport.agreement``) as a table: counts and Cohen's kappa per pair."""
    table = Table(title="agreement between annotators (each annotator's latest label per sample)")
    for col in ("question", "labelled", "2+ annotators", "agree", "disagree", "answers", "Cohen's kappa"):
        table.add_column(col, justify="left" if col in ("question", "answers", "Cohen's kappa") else "right")
    for q, a in agreement.items():
        kappas = "; ".join(
            f"{'n/a' if p['kappa'] is None else format(p['kappa'], '.2f')} ({p['first']} / {p['second']}, n={p['n']})"
            for p in a["pairs"]
        )
        answers = ", ".join(f"{k} {v}" for k, v in a["answers"].items())
        table.add_row(q, *map(str, (a["labelled"], a["overlapping"], a["agree"], a["disagree"])), answers,
                      kappas or "-")
    return table


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
    """Start Label Studio on the data dir's own admin account and token (DATA_DIR/credentials.env). Ctrl-C stops it."""
    from ergo_data.labelstudio.server import (
        DEFAULT_VENV,
        LabelStudioServer,
        label_studio_exe,
        settings_for_data_dir,
    )

    with cli_errors(code=USAGE_EXIT):  # unusable data dir credentials, no server venv
        settings, notes = settings_for_data_dir(
            data_dir.resolve(), host, port, document_root.resolve() if document_root else None
        )
        server = LabelStudioServer(settings, venv or DEFAULT_VENV)
        label_studio_exe(server.venv)
    console.print(f"starting Label Studio on {settings.url} (data in {settings.data_dir}) ...")
    with cli_errors():  # exit 1: the port is taken, the server does not come up, its token does not work
        try:
            server.start(timeout=start_timeout)
            creds_file, more = server.claim_credentials()
        except KeyboardInterrupt:
            server.stop()
            raise typer.Exit(130) from None
        except BaseException:
            server.stop()
            raise
    console.print(f"[bold green]Label Studio is up:[/] {server.url}  (log: {server.log_path})")
    for note in notes + more:
        console.print(f"  [yellow]note:[/] {note}", highlight=False)
    console.print(f"  credentials of this data dir (owner-only): {creds_file}; load them in each shell with")
    console.print(f"    source {creds_file}", highlight=False)
    console.print(
        f"  web login: {settings.username} (password in that file). Ctrl-C stops the server.", highlight=False
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
