"use strict";

// One row of a bar chart: its label, a track filled to ``share`` (0..1) of its width, and its value.
function barItem(labelText, share, valueText, className = "bar") {
  const part = (tag, name, text) => {
    const node = document.createElement(tag);
    node.className = name;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const track = part("span", "bar-track");
  track.setAttribute("aria-hidden", "true");
  const fill = part("span", "bar-fill");
  fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
  track.append(fill);
  const row = part("li", className);
  row.append(part("span", "bar-label", labelText), track, part("span", "bar-value", valueText));
  return row;
}

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
    drawCorrections(stats.corrections);
  }

  // The corrections matrix: a row per true label that has any, a column per label of the model.
  function drawCorrections(corrections) {
    const table = document.getElementById("corrections-matrix");
    if (!table || !corrections) return;
    const labels = JSON.parse(document.getElementById("corrections").dataset.labels);
    const rows = Object.entries(corrections.by_label).map(([truth, answers]) => {
      const row = document.createElement("tr");
      const head = document.createElement("th");
      head.scope = "row";
      head.textContent = truth;
      row.append(head);
      for (const label of labels) {
        const cell = document.createElement("td");
        const count = answers[label] || 0;
        cell.textContent = count ? String(count) : "";
        if (count) cell.dataset.count = String(count);
        row.append(cell);
      }
      return row;
    });
    table.tBodies[0].replaceChildren(...rows);
    const status = document.getElementById("corrections-status");
    status.dataset.total = String(corrections.total);
    status.textContent = corrections.total ? `${corrections.total} correction(s).` : "No correction yet.";
  }

  function drawSizes(counts, total) {
    const rows = Object.entries(counts).filter(([, count]) => count > 0)
      .map(([range, count]) => barItem(range, count / total, String(count)));
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

// The rollout section's table: GET /v1/models/{name}/routing every few seconds, each served version's
// figures redrawn in the form service/web/rollout.py renders them.
(() => {
  const section = document.getElementById("rollout");
  if (!section) return;
  const body = section.querySelector("#rollout-versions tbody");
  const EVERY_MS = 3000;
  const percent = (f) => (typeof f === "number" ? `${(f * 100).toFixed(1)} %` : "—");
  const ms = (s) => (typeof s === "number" ? `${(s * 1000).toFixed(1)} ms` : "—");

  function cells(doc, version) {
    const effective = doc.effective || {}, figures = doc.versions[version], requests = figures.requests;
    const roles = {[effective.default]: "default"};
    for (const role of ["canary", "shadow"]) if (effective[role]) roles[effective[role].version] = role;
    const agreement = Object.entries(figures.agreement).filter(([, a]) => a.rate !== null)
      .map(([role, a]) => `${role} ${percent(a.rate)} of ${a.agree + a.disagree}`).join("; ");
    const labels = Object.entries(figures.labels).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([label, count]) => `${label} ${count}`).join(", ");
    return [version, roles[version] || "", String(requests.total), String(requests.errors),
            percent(requests.error_rate), ms(figures.latency_seconds.p50), ms(figures.latency_seconds.p99),
            agreement || "—", labels || "—"];
  }

  function draw(doc) {
    const rows = [...doc.served].reverse().map((version) => {
      const row = document.createElement("tr");
      cells(doc, version).forEach((text, i) => {
        const cell = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) cell.scope = "row";
        cell.textContent = text;
        row.append(cell);
      });
      return row;
    });
    body.replaceChildren(...rows);
  }

  async function refresh() {
    try {
      const response = await fetch(section.dataset.routing, {cache: "no-store"});
      if (response.ok) draw(await response.json());
    } catch (error) {
      // The live figures' status line says when the service cannot be reached.
    }
    setTimeout(refresh, EVERY_MS);
  }
  setTimeout(refresh, EVERY_MS);
})();

// A table model's "Try it": the features typed in, sent to :explain; the answer and a signed bar per
// feature (red: pushed towards the answer, blue: against, each as long as its share of the largest); a
// wrong answer corrected through the feedback route with the same row.
(() => {
  const section = document.getElementById("try");
  if (!section) return;
  const form = document.getElementById("try-form"), bars = document.getElementById("try-bars");
  const prediction = document.getElementById("try-prediction"), confidence = document.getElementById("try-confidence");
  const correct = document.getElementById("try-correct"), correctLabel = document.getElementById("try-correct-label");
  const correctNote = document.getElementById("try-correct-note");
  let row = null;

  const values = () => Object.fromEntries([...form.querySelectorAll("input[data-feature]")]
    .map((input) => [input.dataset.feature, Number(input.value)]));

  function drawBars(attributions) {
    const entries = Object.entries(attributions);
    const largest = Math.max(...entries.map(([, v]) => Math.abs(v)), 1e-12);
    bars.replaceChildren(...entries.map(([feature, value]) => {
      const item = barItem(feature, Math.abs(value) / largest,
                           `${value >= 0 ? "+" : "−"}${Math.abs(value).toPrecision(2)}`,
                           value >= 0 ? "bar towards" : "bar against");
      item.dataset.feature = feature;
      item.dataset.attribution = String(value);
      return item;
    }));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    row = values();
    section.dataset.state = "busy";
    try {
      const response = await fetch(section.dataset.explain, {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({instances: [row]})});
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      const answer = body.predictions[0], explanation = body.explanations[0];
      prediction.textContent = answer.label === null ? "unlike anything it knows" : answer.label;
      confidence.textContent = `${(answer.probabilities[explanation.label] * 100).toFixed(1)} %`;
      drawBars(explanation.attributions[explanation.label]);
      if (correct) {
        correct.hidden = false;
        correctNote.textContent = "";
      }
      section.dataset.state = "done";
    } catch (error) {
      prediction.textContent = "—";
      confidence.textContent = `Could not explain: ${error.message}`;
      section.dataset.state = "error";
    }
  });

  if (correct) correct.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!row) return;
    try {
      const response = await fetch(section.dataset.feedback, {method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({instances: [row], label: correctLabel.value})});
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      const item = body.stored[0];
      correctNote.textContent = item.duplicate ? `Already stored as ${item.label}.`
        : `Thank you: stored as ${item.label} (the model said ${item.predicted}).`;
      correct.dataset.state = "done";
    } catch (error) {
      correctNote.textContent = `Not stored: ${error.message}`;
      correct.dataset.state = "error";
    }
  });
})();
