"""bench_serve.py's output: one line per run, the targets of the performance issue, and the chart."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

LABELS = {"png": "1 PNG per request", "json": "1 UINT8 image per OIP JSON request",
          "bin64": "64 UINT8 images per binary OIP request", "json64": "64 UINT8 images per OIP JSON request",
          "naive": "naive Flask app, 1 PNG per request",
          "live": "ceiling: GET /v2/health/live (no work), requests/s"}

# The naive app is another server, and the live row counts requests that run no model: neither row is a
# fraction of the served model's in-process speed worth printing.
NOT_THE_MODEL = ("naive", "live")


def report(row: dict[str, Any]) -> str:
    """One result line."""
    server = _server(row)
    return (("" if server == "service" else f"{server} ")
            + f"{row['payload']:6} c={row['connections']:<3} {row['images_per_s']:8.0f} images/s  "
            f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']:<4}"
            + ("" if row["payload"] in NOT_THE_MODEL or _peer(row) else f" {row['ratio']:.2f} x in-process"
               + (f" ({row['ratio_to_best']:.2f} x the best)" if "ratio_to_best" in row else ""))
            + (f"  batches: {b['images']:.2f} images, pass {b['pass_ms']:.2f} ms"
               + (f" ({b['pass_ratio']:.2f} x in-process {b['in_process_pass_ms']:.2f} ms, same threads)"
                  if "pass_ratio" in b else "")
               + f", queue wait {b['queue_wait_ms']:.2f} ms" if (b := row.get("batches")) else "")
            + (f"  CPU per request {c['total']:.0f} us (runtime {c['runtime']:.0f}, workers "
               f"{c['workers']:.0f}, wrk {c['wrk']:.0f})" if (c := row.get("cpu_us_per_request")) else "")
            + (f"  connections per worker {_splits(row['worker_connections'])}"
               if row.get("worker_connections") else ""))


def _splits(splits: list) -> str:
    """Splits as text: "4/4" for one round, "4/4, 5/3, 4/4" for several (older results hold one split)."""
    rounds = splits if isinstance(splits[0], list) else [splits]
    return ", ".join("/".join(map(str, split)) for split in rounds)


def _server(row: dict[str, Any]) -> str:
    return row.get("server", "service")  # "versus": runs against --versus; a --peer's name: its runs


def _peer(row: dict[str, Any]) -> bool:
    """Whether the row is another server's (a --peer or --peer-json): the same request, not trainserve."""
    return _server(row) not in ("service", "versus") and not _server(row).startswith("format:")


def _run(results: dict[str, Any], payload: str, connections: int, server: str = "service"
         ) -> dict[str, Any] | None:
    return next((r for r in results["runs"] if r["payload"] == payload and r["connections"] == connections
                 and _server(r) == server), None)


def _paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """a's throughput over b's: the median of the round-by-round ratios when both ran the same rounds
    alternately (bench_serve.py does that for the naive app and --versus), else the ratio of the medians."""
    # A round in which b answered nothing (a peer that failed) has no ratio: the rest decide, or inf.
    if len(a.get("rounds", [])) == len(b.get("rounds", [])) > 0:
        ratios = [x / y for x, y in zip(a["rounds"], b["rounds"], strict=True) if y]
        return statistics.median(ratios) if ratios else math.inf
    return a["images_per_s"] / b["images_per_s"] if b["images_per_s"] else math.inf


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with its measured value and whether it is met (None: not measured)."""
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float | None, goal: float, unit: str, at_least: bool) -> None:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        targets.append({"target": name, "value": value, "goal": goal, "unit": unit, "met": met,
                        "at_least": at_least})

    # The hot-path issue's targets (docs/benchmarks.md#the-event-loop-hot-path).
    for peer, goals in (("mosec", {1: 8.0, 8: 4.0, 64: 1.0}), ("torchserve", {64: 1.8})):
        for connections, goal in goals.items():
            mine, theirs = _run(results, "png", connections), _run(results, "png", connections, peer)
            if theirs is not None:
                target(f"1 PNG per request at c={connections}, multiple of {peer} (paired rounds)",
                       mine and _paired(mine, theirs), goal, "x", at_least=True)
    json_rows = _run(results, "json", 64), _run(results, "json", 64, "mosec")
    if json_rows[1] is not None:
        target("OIP JSON, one image, c=64, multiple of mosec's JSON (paired rounds)",
               json_rows[0] and _paired(json_rows[0], json_rows[1]), 1.0, "x", at_least=True)
    single = _run(results, "png", 1)
    target("1 PNG per request: p50 at c=1", single and single["p50_ms"], 0.9, "ms", at_least=False)
    png = _run(results, "png", 64)
    cpu = png and png.get("cpu_us_per_request")
    target("1 PNG per request at c=64: server CPU per request, every process", cpu and cpu["total"], 200.0,
           "us", at_least=False)
    target("1 PNG per request at c=64: the runtime's CPU per request", cpu and cpu["runtime"], 40.0, "us",
           at_least=False)
    binary = _run(results, "bin64", 8)
    target("64-image binary OIP at c=8, fraction of in-process batch 64 (paired rounds)",
           binary and binary["ratio"], 0.85, "x", at_least=True)
    naive = _run(results, "naive", 64)
    target("1 PNG per request at c=64, multiple of the naive app", png and naive and _paired(png, naive), 2.5,
           "x", at_least=True)
    gunicorn = _run(results, "png", 64, "trainserve-gunicorn")
    target("gunicorn: 1 PNG per request at c=64, images/s (before the hot path: 1,754 here)",
           gunicorn and gunicorn["images_per_s"], 1754.0, "images/s", at_least=True)
    target("ready after process start", results.get("ready_s"), 10.0, "s", at_least=False)
    lines = ["", "targets:"]
    for t in targets:
        value = "not measured" if t["value"] is None else f"{t['value']:.2f} {t['unit']}"
        verdict = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        sign = ">=" if t["at_least"] else "<="
        lines.append(f"  {t['target']}: {value} (goal {sign} {t['goal']:.2f} {t['unit']}) {verdict}")
    versus = [(r, _run(results, r["payload"], r["connections"], "versus")) for r in results["runs"]
              if _server(r) == "service"]
    if any(other for _, other in versus):
        lines.append("against --versus (median of the round-by-round ratios; above 1: this one is faster):")
        lines += [f"  {r['payload']:6} c={r['connections']:<3} {_paired(r, other):.3f} x"
                  for r, other in versus if other]
    for peer in dict.fromkeys(_server(r) for r in results["runs"] if _peer(r)):
        lines.append(f"against {peer} (1 image per request, the median of the round-by-round ratios; "
                     "above 1: trainserve is faster):")
        lines += [f"  {r['payload']:6} c={r['connections']:<3} {_paired(mine, r):.3f} x  "
                  f"({mine['images_per_s']:.0f} against {r['images_per_s']:.0f} images/s, p50 "
                  f"{mine['p50_ms']:.2f} against {r['p50_ms']:.2f} ms)"
                  for r in results["runs"]
                  if _server(r) == peer and (mine := _run(results, r["payload"], r["connections"]))]
    for fmt in dict.fromkeys(_server(r) for r in results["runs"] if _server(r).startswith("format:")):
        lines.append(f"served as {fmt.removeprefix('format:')} (the median of the round-by-round ratios to "
                     f"the main service, which served {results.get('format') or 'its default'}):")
        lines += [f"  {r['payload']:6} c={r['connections']:<3} {_paired(r, mine):.3f} x  "
                  f"({r['images_per_s']:.0f} images/s)"
                  for r in results["runs"]
                  if _server(r) == fmt and (mine := _run(results, r["payload"], r["connections"]))]
    for key, label in (("memory", "service"), ("memory_gunicorn", "service on gunicorn")):
        if memory := results.get(key):
            lines.append(f"memory of the {label}, every process: RSS {memory['rss_mib']:.0f} MiB, "
                         f"PSS {memory['pss_mib']:.0f} MiB")
            lines += [f"  {p['pid']}: RSS {p['rss_mib']:.0f} MiB, PSS {p['pss_mib']:.0f} MiB  {p['command']}"
                      for p in memory["processes"]]
    return {"targets": targets, "lines": lines}


def chart(results: dict[str, Any], path: Path) -> None:
    """Images/s against concurrency, one line per payload, the in-process figures as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for server, payload in dict.fromkeys((_server(r), r["payload"]) for r in results["runs"]):
        runs = [r for r in results["runs"] if r["payload"] == payload and _server(r) == server]
        label = LABELS.get(payload, payload)
        ax.plot([r["connections"] for r in runs], [r["images_per_s"] for r in runs], marker="o",
                linestyle={"service": "--" if payload == "naive" else "-", "versus": ":"}.get(server, "-."),
                label=label if server == "service" else
                f"{'--versus' if server == 'versus' else server}: {label}")
    ref = results["in_process"]
    for batch, style in ((64, ":"), (1, "-.")):
        ax.axhline(ref[f"batch{batch}_images_per_s"], color="grey", linestyle=style,
                   label=f"in-process, batch {batch}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent connections (wrk)")
    ax.set_yscale("log")  # single images and 64-image requests differ by ~20x
    ax.set_ylabel("images / s (log)")
    ax.set_title(f"trainserve: {results['model']}, throughput vs concurrency")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
