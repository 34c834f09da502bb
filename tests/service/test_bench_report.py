"""The benchmark's arithmetic (scripts/bench_report.py, bench_serve.py): paired ratios, the targets, the
--versus and --peer summaries, the batchers' means over one run."""

from __future__ import annotations

from bench_report import _paired, report, summary
from bench_serve import batch_stats


def row(payload: str, connections: int, rounds: list[float], **extra) -> dict:
    return {"payload": payload, "connections": connections, "images_per_s": sorted(rounds)[len(rounds) // 2],
            "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "ratio": 0.5, "rounds": rounds, **extra}


def results(*runs: dict) -> dict:
    return {"in_process": {"batch1_p50_ms": 0.1, "batch64_images_per_s": 1000.0}, "runs": list(runs),
            "ready_s": 2.0}


def test_paired_ratio_is_the_median_of_round_by_round_ratios_not_the_ratio_of_medians():
    # Round ratios 2, 1.5 and 3 (median 2) while the machine's speed drifted; the medians' ratio is 1.5.
    fast, slow = row("png", 64, [200.0, 90.0, 60.0]), row("naive", 64, [100.0, 60.0, 20.0])
    assert _paired(fast, slow) == 2.0
    # Without the same rounds on both sides there is nothing to pair: the ratio of the medians.
    assert _paired(fast, row("naive", 64, [40.0])) == 90.0 / 40.0
    # A round in which the other server answered nothing (a peer that failed) is left out, not a crash.
    assert _paired(fast, row("mosec", 64, [100.0, 0.0, 20.0])) == 2.5
    assert _paired(fast, row("mosec", 64, [0.0, 0.0, 0.0])) == float("inf")


def test_summary_judges_each_target_and_names_what_was_not_measured():
    cpu = {"total": 150.0, "runtime": 50.0, "workers": 100.0, "wrk": 30.0}
    out = summary(results(row("bin64", 8, [900.0], ratio=0.9),
                          row("png", 64, [300.0, 310.0], cpu_us_per_request=cpu),
                          row("png", 64, [100.0, 100.0], server="mosec"),
                          row("naive", 64, [100.0, 100.0]), row("png", 1, [10.0], p50_ms=1.2)))
    verdicts = {t["target"]: t["met"] for t in out["targets"]}
    assert verdicts["64-image binary OIP at c=8, fraction of in-process batch 64 (paired rounds)"] is True
    assert verdicts["1 PNG per request at c=64, multiple of the naive app"] is True  # 3.05x
    assert verdicts["1 PNG per request at c=64, multiple of mosec (paired rounds)"] is True
    assert verdicts["1 PNG per request: p50 at c=1"] is False  # 1.2 > 0.9
    assert verdicts["1 PNG per request at c=64: server CPU per request, every process"] is True  # 150 <= 200
    assert verdicts["1 PNG per request at c=64: the runtime's CPU per request"] is False  # 50 > 40
    assert "1 PNG per request at c=64, multiple of torchserve (paired rounds)" not in verdicts  # not run
    assert any("not measured" in line for line in out["lines"])  # no gunicorn row


def test_versus_rows_are_kept_apart_and_summarised_as_paired_ratios():
    mine = row("png", 8, [110.0, 120.0])
    theirs = row("png", 8, [100.0, 100.0], server="versus")
    out = summary(results(mine, theirs))
    assert "against --versus" in "\n".join(out["lines"])
    assert any(line.split() == ["png", "c=8", "1.150", "x"] for line in out["lines"])
    assert report(theirs).startswith("versus png")
    assert not report(mine).startswith("versus")


def test_batch_stats_are_the_means_over_one_run_from_two_readings_of_the_counters():
    before = {"trainserve_batch_size_images_sum": 100.0, "trainserve_batch_size_images_count": 50.0,
              "trainserve_compute_seconds_sum": 1.0, "trainserve_compute_seconds_count": 50.0,
              "trainserve_queue_wait_seconds_sum": 2.0, "trainserve_queue_wait_seconds_count": 100.0}
    after = {"trainserve_batch_size_images_sum": 500.0, "trainserve_batch_size_images_count": 150.0,
             "trainserve_compute_seconds_sum": 1.3, "trainserve_compute_seconds_count": 150.0,
             "trainserve_queue_wait_seconds_sum": 2.4, "trainserve_queue_wait_seconds_count": 500.0}
    stats = batch_stats(before, after)
    assert stats is not None
    assert stats["images"] == 4.0  # 400 images in 100 batches
    assert round(stats["pass_ms"], 6) == 3.0  # 0.3 s over 100 passes
    assert round(stats["queue_wait_ms"], 6) == 1.0  # 0.4 s over 400 requests
    assert batch_stats(before, before) is None  # no batch ran
    assert batch_stats(None, after) is None  # no trainserve (the naive app has no /metrics)


def test_only_the_served_models_rows_print_a_fraction_of_in_process():
    served = row("png", 64, [300.0], ratio_to_best=0.25)
    assert "0.50 x in-process (0.25 x the best)" in report(served)
    for other in ("naive", "live"):  # another server; requests that run no model
        assert "in-process" not in report(row(other, 64, [300.0], ratio_to_best=0.25))


def test_peer_rows_are_another_servers_and_summarised_against_the_services_png_rows():
    mine = row("png", 64, [300.0, 330.0, 240.0])
    peer = row("png", 64, [100.0, 150.0, 120.0], server="torchserve")
    out = summary(results(mine, peer, row("naive", 64, [100.0, 100.0, 100.0])))
    lines = "\n".join(out["lines"])
    assert "against torchserve" in lines
    assert "png    c=64  2.200 x" in lines  # round ratios 3.0, 2.2 and 2.0
    assert report(peer).startswith("torchserve png")
    assert "in-process" not in report(peer)
    # The naive-app target still compares the service's own PNG row, not the peer's.
    verdicts = {t["target"]: t["value"] for t in out["targets"]}
    assert verdicts["1 PNG per request at c=64, multiple of the naive app"] == 3.0


def test_json_peer_rows_are_judged_against_the_services_json_rows():
    png, json_row = row("png", 64, [300.0, 300.0]), row("json", 64, [200.0, 240.0, 180.0])
    peer_png = row("png", 64, [400.0, 400.0], server="mosec")
    peer_json = row("json", 64, [250.0, 200.0, 200.0], server="mosec")
    out = summary(results(png, json_row, peer_png, peer_json))
    verdicts = {t["target"]: t for t in out["targets"]}
    json_target = verdicts["OIP JSON, one image, c=64, multiple of mosec's JSON (paired rounds)"]
    assert json_target["value"] == 0.9 and json_target["met"] is False  # round ratios 0.8, 1.2, 0.9
    assert verdicts["1 PNG per request at c=64, multiple of mosec (paired rounds)"]["value"] == 0.75
    lines = "\n".join(out["lines"])
    assert "json   c=64  0.900 x" in lines and "png    c=64  0.750 x" in lines
