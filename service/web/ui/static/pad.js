"use strict";
// The digit page: a client of the service's public API like any other. It lists the models
// (GET /v1/models) and sends the drawing or the uploaded file to
// POST /v1/models/{name}/versions/{version}:classify?include_input=true, which answers with every label's
// probability and the input exactly as the model received it after preprocessing; then the same image to
// :explain, whose attributions are drawn over that input (red: pixels that pushed towards the answer; blue:
// against). A drawing is sent once the pen has rested PAUSE_MS, not after every stroke: a two-stroke 4
// is not first answered as the one stroke it was halfway.
(() => {
  const PAUSE_MS = 600;
  const byId = (id) => document.getElementById(id);
  const pad = byId("pad"), ink = pad.getContext("2d");
  const select = byId("model"), upload = byId("upload"), drop = byId("drop"), cardLink = byId("card-link");
  const result = byId("result"), bars = byId("probabilities"), preview = byId("preview");
  const predictionBox = byId("prediction"), confidenceBox = byId("confidence"), latencyBox = byId("latency");
  const errorBox = byId("error"), thresholdNote = byId("threshold-note"), fileName = byId("file-name");
  const overlay = byId("attribution"), overlayFigure = byId("attribution-figure");
  const overlayNote = byId("attribution-note");
  const correctForm = byId("correct"), correctLabel = byId("correct-label"), correctNote = byId("correct-note");
  const history = byId("history"), pen = byId("pen");
  const HISTORY = 6;  // answers kept in view, newest first
  let shown = null;    // the answer on the page: {model, input}, what a correction is about
  let models = [];     // the /v1/models listing
  let last = null;     // the last image sent, sent again when another model is chosen
  let drawing = false, sequence = 0, answered = 0, pause = null;

  const key = (m) => `${m.name}/${m.version}`;
  const chosen = () => models[select.selectedIndex];
  const percent = (p) => (p > 0 && p < 0.001 ? "<0.1 %" : `${(p * 100).toFixed(1)} %`);

  function clearPad() {
    ink.fillStyle = "#fff";
    ink.fillRect(0, 0, pad.width, pad.height);
  }

  function point(event) {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    clearTimeout(pause);  // another stroke of the same digit: wait for the pen to rest again
    drawing = true;
    Object.assign(ink, {lineWidth: pad.width / 13, lineCap: "round", lineJoin: "round", strokeStyle: "#000"});
    const [x, y] = point(event);
    ink.beginPath();
    ink.moveTo(x, y);
    ink.lineTo(x, y);
    ink.stroke();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of coalesced.length ? coalesced : [event]) ink.lineTo(...point(e));
    ink.stroke();
  });
  const endStroke = () => {
    if (!drawing) return;
    drawing = false;
    clearTimeout(pause);
    pause = setTimeout(() => pad.toBlob((blob) => send(blob), "image/png"), PAUSE_MS);
  };
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // The keyboard's pen: arrows move it (Shift: further), Space lowers or lifts it, a lowered pen draws as it
  // moves; Enter sends at once, Escape clears. A marker over the pad shows where it is.
  const keyPen = {x: pad.width / 2, y: pad.height / 2, down: false};
  function showPen() {
    pen.hidden = false;
    pen.classList.toggle("down", keyPen.down);
    pen.style.left = `${(keyPen.x / pad.width) * pad.clientWidth + pad.offsetLeft}px`;
    pen.style.top = `${(keyPen.y / pad.height) * pad.clientHeight + pad.offsetTop}px`;
  }
  pad.addEventListener("focus", showPen);
  pad.addEventListener("blur", () => { pen.hidden = true; });
  pad.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? 42 : 14;
    const moves = {ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step]};
    if (event.key in moves) {
      const [dx, dy] = moves[event.key];
      const from = [keyPen.x, keyPen.y];
      keyPen.x = Math.max(0, Math.min(pad.width, keyPen.x + dx));
      keyPen.y = Math.max(0, Math.min(pad.height, keyPen.y + dy));
      if (keyPen.down) {
        Object.assign(ink, {lineWidth: pad.width / 13, lineCap: "round", lineJoin: "round", strokeStyle: "#000"});
        ink.beginPath();
        ink.moveTo(...from);
        ink.lineTo(keyPen.x, keyPen.y);
        ink.stroke();
        clearTimeout(pause);  // sent once the keys rest, as a drawing is once the pen rests
        pause = setTimeout(() => pad.toBlob((blob) => send(blob), "image/png"), PAUSE_MS * 2);
      }
    } else if (event.key === " ") {
      keyPen.down = !keyPen.down;
    } else if (event.key === "Enter") {
      clearTimeout(pause);
      pad.toBlob((blob) => send(blob), "image/png");
    } else if (event.key === "Escape") {
      byId("clear").click();
    } else {
      return;
    }
    event.preventDefault();
    showPen();
  });

  byId("clear").addEventListener("click", () => {
    clearPad();
    clearTimeout(pause);
    sequence++;  // an answer still on its way is for what was cleared: it is not shown
    last = null;
    upload.value = "";
    fileName.textContent = "";
    resetAnswer();
  });

  // Everything an answer put on the page goes, as after loading it.
  function resetAnswer() {
    predictionBox.textContent = confidenceBox.textContent = latencyBox.textContent = "—";
    bars.replaceChildren();
    errorBox.hidden = thresholdNote.hidden = true;
    preview.getContext("2d").clearRect(0, 0, preview.width, preview.height);
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    overlayFigure.dataset.state = "idle";
    overlayNote.textContent = "";
    result.dataset.state = "idle";
    correctForm.hidden = true;
    correctNote.textContent = "";
    shown = null;
  }

  // "That is wrong: it is a …": the input as the model received it, with the true label, to the feedback
  // route; the service says whether it stored it (or that feedback is off).
  correctForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!shown) return;
    const {model, input} = shown;
    const url = `/v1/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}` +
                "/feedback";
    const send = () => {
      const headers = {"Content-Type": "application/json"};
      const token = sessionStorage.getItem("feedbackToken");
      if (token) headers.Authorization = `Bearer ${token}`;
      return fetch(url, {method: "POST", headers,
                         body: JSON.stringify({instances: [input], label: correctLabel.value})});
    };
    try {
      let response = await send();
      // With TRAINSERVE_FEEDBACK_TOKEN set, ask for the token once and keep it for this tab.
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem("feedbackToken");
        const token = window.prompt("Storing corrections here needs a token. Token:");
        if (token) {
          sessionStorage.setItem("feedbackToken", token.trim());
          response = await send();
        }
      }
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      const item = body.stored[0];
      correctNote.textContent = item.duplicate ? `Already stored as ${item.label}.`
        : `Thank you: stored as ${item.label} (the model said ${item.predicted}).`;
      correctForm.dataset.state = "done";
    } catch (error) {
      correctNote.textContent = `Not stored: ${error.message}`;
      correctForm.dataset.state = "error";
    }
  });
  upload.addEventListener("change", () => upload.files[0] && useFile(upload.files[0]));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
  });

  async function useFile(file) {
    fileName.textContent = file.name;
    send(file);  // the file itself, as it is: the service decodes and preprocesses it
    try {        // and on the pad, fitted, so that strokes drawn next go on top of it
      const image = await createImageBitmap(file);
      const scale = Math.min(pad.width / image.width, pad.height / image.height);
      const w = image.width * scale, h = image.height * scale;
      clearPad();
      ink.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    } catch {
      // The browser cannot show it; the service's answer says whether it can read it.
    }
  }

  async function send(blob) {
    last = blob;
    const model = chosen();
    if (!model) return;
    const id = ++sequence;
    result.dataset.state = "busy";
    const url = `/v1/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}` +
                ":classify?include_input=true";
    const started = performance.now();
    try {
      // A file the browser does not type as an image goes as bytes: the service says whether it can read it.
      const type = blob.type.startsWith("image/") ? blob.type : "application/octet-stream";
      const response = await fetch(url, {method: "POST", body: blob, headers: {"Content-Type": type}});
      const body = await response.json();
      const elapsed = performance.now() - started;
      if (id !== sequence) return;  // a newer request is on its way: show that one
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      render(model, body.predictions[0], elapsed);
      remember(model);
      result.dataset.state = "done";
      offerCorrection(model, body.predictions[0]);
      explain(model, blob, body.predictions[0].input, id);
    } catch (error) {
      if (id !== sequence) return;
      errorBox.textContent = `Could not classify this image: ${error.message}`;
      errorBox.hidden = false;
      result.dataset.state = "error";
    } finally {
      if (id === sequence) result.dataset.answered = String(++answered);
    }
  }

  // The answer just shown joins the recent ones: the input the model got, its answer, which model.
  function remember(model) {
    const item = element("li", "history-item");
    const picture = document.createElement("img");
    picture.src = preview.toDataURL("image/png");
    picture.width = picture.height = 42;
    picture.alt = `Input ${answered + 1}`;
    item.append(picture, element("span", "history-answer", predictionBox.textContent),
                element("span", "note", `${confidenceBox.textContent} · ${model.name} v${model.version}`));
    history.prepend(item);
    while (history.children.length > HISTORY) history.lastElementChild.remove();
  }

  function offerCorrection(model, prediction) {
    shown = {model, input: prediction.input};
    correctForm.hidden = model.task !== "multiclass";
    correctNote.textContent = "";
    delete correctForm.dataset.state;
    correctLabel.replaceChildren(...model.labels.map((label) => new Option(label, label)));
    const other = model.labels.find((label) => label !== prediction.label);
    if (other !== undefined) correctLabel.value = other;
  }

  // Which pixels of the input pushed the model towards its answer: :explain on the same image, drawn over
  // the input the model received. An explanation the service cannot give now (429: its explanation queue is
  // full) leaves the answer as it is and says so.
  async function explain(model, blob, input, id) {
    overlayFigure.dataset.state = "busy";
    const url = `/v1/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}` +
                ":explain";
    try {
      const type = blob.type.startsWith("image/") ? blob.type : "application/octet-stream";
      const response = await fetch(url, {method: "POST", body: blob, headers: {"Content-Type": type}});
      const body = await response.json();
      if (id !== sequence) return;
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      const explanation = body.explanations[0];
      drawAttributions(input, explanation.attributions[explanation.label]);
      overlayNote.textContent = `${explanation.method.replace("_", " ")} for ${explanation.label}`;
      overlayFigure.dataset.label = explanation.label;
      overlayFigure.dataset.state = "done";
    } catch (error) {
      if (id !== sequence) return;
      overlayNote.textContent = `No explanation: ${error.message}`;
      overlayFigure.dataset.state = "error";
    }
  }

  // The input dimmed, then red where the attribution is positive and blue where negative, each as strong
  // as its share of the largest magnitude.
  function drawAttributions(input, attributions) {
    const map = attributions[0], height = map.length, width = map[0].length;
    let largest = 0;
    for (const row of map) for (const value of row) largest = Math.max(largest, Math.abs(value));
    const image = new ImageData(width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const at = (y * width + x) * 4, grey = Array.isArray(input) ? input[0][y][x] * 0.35 : 0;
        const share = largest > 0 ? map[y][x] / largest : 0;
        const strength = Math.min(1, Math.abs(share) * 1.5);
        const [r, g, b] = share > 0 ? [230, 40, 40] : [40, 90, 230];
        image.data[at] = grey + (r - grey) * strength;
        image.data[at + 1] = grey + (g - grey) * strength;
        image.data[at + 2] = grey + (b - grey) * strength;
        image.data[at + 3] = 255;
      }
    }
    overlay.width = width;
    overlay.height = height;
    overlay.getContext("2d").putImageData(image, 0, 0);
  }

  // Binary and multi-label models decide per label against a threshold; a multi-class model takes the best.
  function threshold(model, prediction) {
    for (const value of [prediction.threshold, model.threshold]) if (typeof value === "number") return value;
    return null;
  }

  function render(model, prediction, elapsed) {
    errorBox.hidden = true;
    const probabilities = prediction.probabilities;
    const labels = model.labels.filter((label) => label in probabilities);
    const cut = threshold(model, prediction);
    const picked = cut === null ? (prediction.label === null ? [] : [prediction.label])
      : (Array.isArray(prediction.labels) ? prediction.labels : labels.filter((l) => probabilities[l] >= cut));
    predictionBox.textContent = picked.length ? picked.join(", ") : "none";
    confidenceBox.textContent = cut === null ? percent(probabilities[prediction.label])
      : `labels at or over the threshold, ${cut}`;
    if (prediction.outlier) {  // the model's "not a digit" score reached its threshold: no label is given
      const meaning = (model.outliers && model.outliers.meaning) || "not one of its labels";
      predictionBox.textContent = `this ${meaning.replace(/^not /, "does not look like ")}`;
      confidenceBox.textContent = `${percent(prediction.outlier_score)} unlike anything it knows ` +
        `(flagged from ${percent(model.outliers.threshold)})`;
    }
    thresholdNote.hidden = cut === null;
    thresholdNote.textContent = cut === null ? "" : `The red mark is the decision threshold, ${cut}.`;
    latencyBox.textContent = `${Math.round(elapsed)} ms round trip (${model.name} v${model.version})`;
    drawPreview(prediction.input);
    drawBars(labels, probabilities, cut, new Set(picked));
  }

  function drawBars(labels, probabilities, cut, picked) {
    bars.replaceChildren(...labels.map((label) => {
      const p = probabilities[label];
      const row = element("li", picked.has(label) ? "bar top" : "bar");
      row.dataset.label = label;
      row.dataset.probability = String(p);
      const track = element("span", "bar-track");
      track.setAttribute("aria-hidden", "true");
      const fill = element("span", "bar-fill");
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      track.append(fill);
      if (cut !== null) {
        const mark = element("span", "bar-threshold");
        mark.style.left = `${cut * 100}%`;
        track.append(mark);
      }
      row.append(element("span", "bar-label", label), track, element("span", "bar-value", percent(p)));
      return row;
    }));
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // input: uint8 pixels nested [channels][height][width], exactly what the model received.
  function drawPreview(input) {
    if (!Array.isArray(input) || !input.length) return;
    const channels = input.length, height = input[0].length, width = input[0][0].length;
    const image = new ImageData(width, height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const at = (y * width + x) * 4;
        for (let c = 0; c < 3; c++) image.data[at + c] = input[channels === 3 ? c : 0][y][x];
        image.data[at + 3] = 255;
      }
    }
    preview.width = width;
    preview.height = height;
    preview.getContext("2d").putImageData(image, 0, 0);
  }

  function modelChosen() {
    const model = chosen();
    if (!model) return;
    cardLink.href = `/ui/models/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}`;
    cardLink.textContent = `About ${model.name} v${model.version}`;
    if (last) send(last);
  }
  select.addEventListener("change", modelChosen);

  async function loadModels() {
    try {
      const response = await fetch("/v1/models");
      const body = await response.json();
      if (!response.ok) throw new Error(body.error || `the service answered ${response.status}`);
      // The pad sends images: a model of named features (tabular data) cannot take one.
      models = body.models.filter((m) => m.input_kind !== "features");
    } catch (error) {
      errorBox.textContent = `Could not list the models: ${error.message}`;
      errorBox.hidden = false;
      return;
    }
    select.replaceChildren(...models.map((m) => new Option(
      `${m.name} v${m.version}${m.default ? " (newest)" : ""} · ${m.architecture}` +
      (typeof m.test_accuracy === "number" ? ` · ${percent(m.test_accuracy)} test accuracy` : ""), key(m))));
    const wanted = models.findIndex((m) => key(m) === new URLSearchParams(location.search).get("model"));
    select.selectedIndex = wanted >= 0 ? wanted : Math.max(0, models.findIndex((m) => m.default));
    modelChosen();
    result.dataset.models = String(models.length);
  }

  clearPad();
  loadModels();
})();
