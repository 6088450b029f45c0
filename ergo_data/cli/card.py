"""``ergo card DIR`` (regenerate a curated set's data card) and ``ergo show DIR --id ID`` (one sample's views).

Registered into the ``ergo`` app by ``ergo_data.cli``:

>>> from typer.testing import CliRunner
>>> from ergo_data.cli.app import app
>>> demo, png = getfixture("demo_set"), getfixture("tmp_path") / "flag.png"  # the demo curation (tests/support)
>>> CliRunner().invoke(app, ["show", str(demo), "--id", "examples/flag", "--out", str(png)]).exit_code
0
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``card`` and ``show`` to ``app``."""

    @app.command()
    def card(
        out: Annotated[Path, typer.Argument(help="output directory of `ergo run`")],
        n_kept: Annotated[int, typer.Option("--kept", min=0, help="kept samples in the gallery (seeded draw)")] = 8,
        n_per_reason: Annotated[int, typer.Option("--per-reason", min=0, help="rejected samples per reason")] = 4,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    ) -> None:
        """Regenerate DIR/README.md (Hugging Face dataset card) and DIR/plots/ from stats.json and the shards."""
        from ergo_data.card.card import write_card
        from ergo_data.cli.common import cli_errors, console, require_run_output

        require_run_output(out, "stats.json")
        with cli_errors(failure=(ValueError,)):  # an unreadable stats.json or shard
            path = write_card(out, quiet=quiet, n_kept=n_kept, n_per_reason=n_per_reason)
        console.print(f"[bold]data card:[/] {path}")

    @app.command()
    def show(
        out: Annotated[Path, typer.Argument(help="output directory of `ergo run`")],
        sample_id: Annotated[str, typer.Option("--id", help="sample id, e.g. examples/flag (kept or rejected)")],
        png: Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write (default: DIR/show/<id>.png)")] = None,
        budgets: Annotated[list[int] | None, typer.Option("--budget", help="token budgets (default: 640 and 1280)")] = None,
    ) -> None:
        """Render one sample's views to a PNG: full image, coarse view at each budget, full-resolution crop."""
        from ergo_data.card.gallery import find_sample, render_sample_views, slug
        from ergo_data.cli.common import FAILURE_EXIT, USAGE_EXIT, console, fail, require_run_output
        from ergo_data.core.imageio import DecodeError
        from ergo_data.core.vision import budget_pixels
        from ergo_data.pipeline.progress import Progress

        require_run_output(out, "data")
        budgets = budgets or [640, 1280]
        if any(b <= 0 for b in budgets):
            fail(f"--budget must be positive token counts, got {budgets}", USAGE_EXIT)
        try:
            row, reject = find_sample(out, sample_id)
        except KeyError as e:
            fail(str(e.args[0]), USAGE_EXIT)
        target = png or out / "show" / f"{slug(sample_id)}.png"
        with Progress() as prog:
            task = prog.task(f"render {sample_id}", total=1)
            try:
                image = render_sample_views(row, {str(b): budget_pixels(b) for b in sorted(set(budgets))}, reject)
            except FileNotFoundError as e:
                fail(f"sample {sample_id!r}: image file not found: {e.filename}", FAILURE_EXIT)
            except (DecodeError, OSError, ValueError) as e:
                fail(f"sample {sample_id!r}: cannot render its image: {e}", FAILURE_EXIT)
            prog.advance(task, 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, optimize=True)
        if reject is not None:
            console.print(f"[yellow]rejected[/] by {reject['stage']}: {reject['reason']} - {reject['detail']}")
        console.print(f"[bold]views:[/] {target}")
