"""``ergo eval``: run a benchmark in one or more inference modes, in process or against a served model;
``ergo eval score`` re-scores a predictions file; ``ergo eval serve`` serves a checkpoint over the OpenAI API.

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [g.name for g in app.registered_groups], [c.name for c in eval_app.registered_commands]
(['eval'], ['score', 'serve'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(help="Evaluate a model on V*, HR-Bench or MME-RealWorld (every failure counts as WRONG); "
                       "`score` re-scores predictions, `serve` serves a checkpoint.", no_args_is_help=False)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def eval_command(
    ctx: typer.Context,
    bench: Annotated[str | None, typer.Option("--bench", help="vstar, hrbench, mme, curated (a set `ergo run` "
                                              "wrote), or a VLMEvalKit TSV by its dataset name: VStarBench, "
                                              "HRBench4K, HRBench8K, MME-RealWorld")] = None,
    path: Annotated[Path | None, typer.Option("--path", help="V* folder, a VLMEvalKit .tsv (or folder), MME json "
                                              "(or folder)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder: results.jsonl, report.md, plot, "
                                             "summary, vlmeval/ predictions")] = None,
    model: Annotated[str, typer.Option("--model", help="'tiny', a local checkpoint dir (e.g. from `ergo train`), "
                                       "a hub name available offline; with --api-base: the served model's name")] = (
        "tiny"),
    mode: Annotated[str, typer.Option("--mode", help="direct, coarse_to_fine, oracle_crop, direct_full; "
                                      "comma-separated")] = "coarse_to_fine",
    full_res_baseline: Annotated[bool, typer.Option("--full-res-baseline", help="also run direct_full: direct at "
                                                    "the model's own budget (16384*28*28), and report the token "
                                                    "ratio coarse-to-fine / full resolution")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=4 * 28 * 28, help="pixel budget of every image "
                                            "shown (1003520 = 1280*28*28, ERGO's main budget)")] = 1280 * 28 * 28,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N items only")] = None,
    split: Annotated[str | None, typer.Option("--split", help="--bench curated: one split of the set (train, "
                                              "val, test)")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="per generation (per turn)")] = 256,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.0, help="seconds per item and mode (and per "
                                                  "request when served); slower items count as WRONG")] = None,
    seed: Annotated[int, typer.Option("--seed", help="first seed (option shuffle, sampling)")] = 0,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="K runs with seeds seed..seed+K-1: Avg@K with its "
                                       "spread")] = 1,
    shuffle: Annotated[bool | None, typer.Option("--shuffle/--no-shuffle", help="shuffle each item's options by "
                                                 "seed (default: V* yes, benches whose file fixes the letters no)",
                                                 show_default=False)] = None,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy")] = 0.0,
    api_base: Annotated[str | None, typer.Option("--api-base", help="an OpenAI-compatible server, e.g. "
                                                 "http://127.0.0.1:8000/v1 (vLLM); --model names the served model")] = (
        None),
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="OPENAI_API_KEY", show_default=False,
                                                help="bearer token for --api-base (default: $OPENAI_API_KEY)")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="items in flight against --api-base")] = 8,
    retries: Annotated[int, typer.Option("--retries", min=0, help="retries of a request on 429/5xx/connection "
                                         "errors (exponential backoff)")] = 4,
    send_chat_template: Annotated[bool, typer.Option("--send-chat-template/--server-chat-template",
                                                     help="coarse_to_fine sends TRL's tool template with each "
                                                     "request (vLLM: --trust-request-chat-template), or relies "
                                                     "on the server's")] = True,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bfloat16 on GPU, float32 on CPU), bfloat16, "
                                       "float16, float32")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Evaluate a model on a benchmark; every failure counts as WRONG and is listed in the report."""
    if ctx.invoked_subcommand is not None:
        return
    from ergo_data.cli.common import USAGE_EXIT, cli_errors, console, fail
    from ergo_data.pipeline.progress import Progress
    from ergo_train.eval.evaluate import MODES, EvalSettings, run_eval
    from ergo_train.eval.loaders import BENCHES

    missing = [o for o, v in (("--bench", bench), ("--path", path), ("--out", out)) if v is None]
    if missing:
        fail(f"missing option(s) {', '.join(missing)} (see `ergo eval --help`)", USAGE_EXIT)
    modes = [m.strip() for m in mode.split(",") if m.strip()]
    if full_res_baseline and "direct_full" not in modes:
        modes.append("direct_full")
    if bench not in BENCHES:
        fail(f"unknown bench {bench!r}; valid: {', '.join(BENCHES)}", USAGE_EXIT)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        fail(f"unknown mode(s) {unknown or mode!r}; valid: {', '.join(MODES)}", USAGE_EXIT)
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        fail(f"unknown dtype {dtype!r}; valid: auto, bfloat16, float16, float32", USAGE_EXIT)
    settings = EvalSettings(max_pixels=max_pixels, max_new_tokens=max_new_tokens, timeout_s=timeout,
                            temperature=temperature, concurrency=concurrency if api_base else 1)
    chat = None
    if api_base:
        from ergo_train.models.served import ServedChat

        chat = ServedChat(api_base, model, api_key=api_key, max_new_tokens=max_new_tokens, temperature=temperature,
                          timeout_s=timeout or 600.0, retries=retries, max_concurrency=concurrency,
                          send_chat_template=send_chat_template)
    with Progress(quiet=quiet) as progress:
        task = progress.task(f"{bench} x {','.join(modes)} (records)")
        try:  # ValueError: a mode the bench cannot run (oracle_crop without boxes)
            with cli_errors(usage=(ValueError,)):
                paths = run_eval(bench, path, model, modes, out, settings=settings, limit=limit, split=split,
                                 seeds=range(seed, seed + seeds), shuffle=shuffle, device=device, dtype=dtype,
                                 chat=chat, on_record=lambda rec: progress.advance(task))
        finally:
            if chat is not None:
                chat.close()
    print_summary(paths["summary"])
    console.print(f"[bold green]report:[/] {paths['report']}")
    console.print(f"[bold]per-item results:[/] {paths['results']}")
    console.print(f"[bold]VLMEvalKit-layout predictions:[/] {paths['vlmeval']}")


@eval_app.command("score")
def score_command(
    predictions: Annotated[Path, typer.Argument(help="results.jsonl of `ergo eval`, or a VLMEvalKit result file "
                                                "(<model>_<dataset>.tsv / .xlsx / .json)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="report folder (default: beside the file, "
                                             "<stem>_score/)")] = None,
    bench: Annotated[str | None, typer.Option("--bench", help="dataset (VLMEvalKit name or ours); default: from "
                                              "the file")] = None,
) -> None:
    """Re-score predictions without a model and print the same report (both matchers for VLMEvalKit files)."""
    from ergo_data.cli.common import cli_errors, console
    from ergo_train.eval.score import score_file

    out = out or predictions.parent / f"{predictions.stem}_score"
    with cli_errors(usage=(ValueError,)):  # ValueError: not a predictions file, an unknown bench
        paths = score_file(predictions, out, bench)
    print_summary(paths["summary"])
    console.print(f"[bold green]report:[/] {paths['report']}")


@eval_app.command("serve")
def serve_command(
    model: Annotated[str, typer.Option("--model", help="'tiny' or a checkpoint directory")] = "tiny",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="processor budget (at least the client's)")] = (
        16384 * 28 * 28),
    device: Annotated[str, typer.Option("--device")] = "auto",
) -> None:
    """Serve a transformers checkpoint on an OpenAI-compatible /v1/chat/completions (for real models: vLLM)."""
    from ergo_data.cli.common import cli_errors
    from ergo_train.eval.chat_server import main

    with cli_errors():  # exit 1: the model cannot be loaded, the port is taken
        main(["--model", model, "--host", host, "--port", str(port), "--max-pixels", str(max_pixels),
              "--device", device])


def print_summary(summary_path: Path) -> None:
    import json
    import math

    from rich.table import Table

    from ergo_data.cli.common import console

    summary = json.loads(summary_path.read_text(encoding="utf-8"))

    def pct(v: float | None) -> str:
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    table = Table(title="accuracy (every failure counted wrong; 95% Wilson CI)")
    for col in ("mode", "n", "acc %", "95% CI %", "Avg@K (sd)", "VLMEvalKit rule %", "parsed %", "failed", "tokens",
                "hit %", "area %", "s/item"):
        table.add_column(col)
    for m, s in summary["modes"].items():
        k, vl = summary["seeds"][m], summary["vlmeval"][m]
        table.add_row(m, str(s["n"]), pct(s["accuracy"]), f"{pct(s['ci_low'])}–{pct(s['ci_high'])}",
                      f"{pct(k['mean'])} ({pct(k['std'])}) K={k['k']}", pct((vl["vlmeval_rule"] or {}).get("overall")),
                      pct(s.get("parseable")), str(s["n_failed"]),
                      "–" if s["vision_tokens_mean"] is None else f"{s['vision_tokens_mean']:.0f}",
                      pct(s.get("region_hit_rate")), pct(s.get("box_area_frac_mean")),
                      "–" if s["wall_s_mean"] is None else f"{s['wall_s_mean']:.2f}")
    console.print(table)
    ratio = summary.get("comparisons", {}).get("token_ratio_c2f_over_full")
    if ratio is not None:
        console.print(f"vision tokens coarse_to_fine / direct_full (full resolution): [bold]{ratio:.3f}[/]")
