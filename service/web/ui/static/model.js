"use strict";
// The model page's live figures: GET /v1/models/{name}/versions/{version}/stats every few seconds, the
// service's own metrics summarised (requests, latency percentiles, batch sizes).
(() => {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status"), sizes = document.getElementById("batch-sizes");
  const EVERY_MS = 3000;
  let previous = null, refreshes = 0;

  const set = (name, text) => { live.querySelector(`[data-stat="${name}"]`).textContent = text; };
  const ms = (seconds) => (typeof seconds === "number" ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms` : "—");

  function show(stats) {
    const requests = stats.requests, now = performance.now();
    const failed = Object.entries(requests.by_status).filter(([code]) => code >= "400")
      .reduce((sum, [, count]) => sum + count, 0);
    set("requests", String(requests.total));
    set("errors", String(failed));
    if (previous) {
      const rate = (requests.total - previous.total) / ((now - previous.at) / 1000);
      set("rate", rate.toFixed(1));
    }
    previous = {total: requests.total, at: now};
    for (const q of ["p50", "p90", "p99"]) set(q, ms(stats.latency_seconds[q]));
    set("wait-p50", ms(stats.queue_wait_seconds.p50));
    set("compute-p50", ms(stats.compute_seconds.p50));
    set("batches", String(stats.batches.count));
    set("images", String(stats.batches.images));
    set("mean-batch", stats.batches.mean_size === null ? "—" : stats.batches.mean_size.toFixed(2));
    drawSizes(stats.batches.sizes, stats.batches.count);
  }

  function drawSizes(counts, total) {
    const rows = Object.entries(counts).filter(([, count]) => count > 0).map(([range, count]) => {
      const row = document.createElement("li");
      row.className = "bar";
      const label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = range;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${(count / total) * 100}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = String(count);
      row.append(label, track, value);
      return row;
    });
    sizes.replaceChildren(...rows);
  }

  async function refresh() {
    try {
      const response = await fetch(live.dataset.stats, {cache: "no-store"});
      const stats = await response.json();
      if (!response.ok) throw new Error(stats.error || `the service answered ${response.status}`);
      show(stats);
      live.dataset.refreshes = String(++refreshes);
      status.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
    } catch (error) {
      status.textContent = `Could not read the figures: ${error.message}`;
    }
    setTimeout(refresh, EVERY_MS);
  }
  refresh();
})();
