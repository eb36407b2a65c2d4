// The playground page: draw on the canvas, send the ink to the backend, show each endpoint's answer in its card.
// The backend turns the ink into the 8×8 input and asks the servers; this file only draws and displays.
"use strict";

(() => {
  const LINE_WIDTH = 24; // of the canvas's 256 pixels: once the digit is scaled to the frame, the dataset's pen width
  const INK = "#1d2330";
  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const preview = document.getElementById("preview");
  const statusLine = document.getElementById("status");
  const sourceCaption = document.getElementById("source");
  const cardsElement = document.getElementById("cards");
  const buttons = ["predict", "clear", "random"].map((id) => document.getElementById(id));
  const cards = new Map(); // endpoint key → card element

  // What Predict sends: the drawing, or a test image (then {index, label, image}).
  let testImage = null;
  let inked = false;
  let lastPoint = null;

  // ---- drawing -----------------------------------------------------------------------------------------------

  function canvasPoint(event) {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width; // the canvas keeps 256 pixels inside whatever size CSS gives it
    return [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale];
  }

  function strokeTo(point) {
    context.beginPath();
    context.moveTo(...(lastPoint || point));
    context.lineTo(...point);
    context.stroke();
    lastPoint = point;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (testImage) clearInput();
    canvas.setPointerCapture(event.pointerId);
    context.strokeStyle = INK;
    context.lineWidth = LINE_WIDTH;
    context.lineCap = "round";
    context.lineJoin = "round";
    lastPoint = null;
    strokeTo(canvasPoint(event));
    inked = true;
  });
  canvas.addEventListener("pointermove", (event) => {
    if (lastPoint) strokeTo(canvasPoint(event));
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { lastPoint = null; });
  }

  function clearInput() {
    context.clearRect(0, 0, canvas.width, canvas.height);
    inked = false;
    testImage = null;
    sourceCaption.textContent = "Your drawing";
    delete sourceCaption.dataset.label;
    showInput(null);
    if (location.hash) history.replaceState(null, "", location.pathname);
  }

  // One byte of ink per pixel, row by row: the canvas's alpha channel (the background is transparent).
  function inkAsBase64() {
    const rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
    const ink = new Uint8Array(canvas.width * canvas.height);
    for (let index = 0; index < ink.length; index += 1) ink[index] = rgba[4 * index + 3];
    let binary = "";
    for (let start = 0; start < ink.length; start += 0x8000) {
      binary += String.fromCharCode.apply(null, ink.subarray(start, start + 0x8000));
    }
    return btoa(binary);
  }

  function drawTestImage(image) {
    context.clearRect(0, 0, canvas.width, canvas.height);
    const cell = canvas.width / image.length;
    image.forEach((row, y) => row.forEach((value, x) => {
      context.fillStyle = INK;
      context.globalAlpha = value / 16;
      context.fillRect(x * cell, y * cell, cell, cell);
    }));
    context.globalAlpha = 1;
  }

  // ---- the 8×8 input ---------------------------------------------------------------------------------------------

  function showInput(image) {
    preview.replaceChildren();
    if (!image) {
      preview.setAttribute("aria-label", "The 8 by 8 input: empty");
      return;
    }
    for (const row of image) {
      for (const value of row) {
        const cell = document.createElement("span");
        const shade = Math.round(255 - (value / 16) * 255);
        cell.style.background = `rgb(${shade}, ${shade}, ${shade})`;
        cell.dataset.value = String(value);
        cell.title = value.toFixed(1);
        preview.append(cell);
      }
    }
    const rows = image.map((row) => row.map((value) => Math.round(value)).join(" ")).join("; ");
    preview.setAttribute("aria-label", `The 8 by 8 input, rows from the top: ${rows}`);
  }

  // ---- cards ----------------------------------------------------------------------------------------------------

  function makeCard(endpoint) {
    const card = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
    card.dataset.endpoint = endpoint.key;
    card.querySelector(".card-title").textContent = endpoint.label;
    const bars = card.querySelector(".bars");
    for (let digit = 0; digit < 10; digit += 1) {
      const item = document.createElement("li");
      item.innerHTML = '<span class="digit"></span>'
        + '<span class="track" aria-hidden="true"><span class="fill"></span></span><span class="value"></span>';
      item.querySelector(".digit").textContent = String(digit);
      bars.append(item);
    }
    cards.set(endpoint.key, card);
    cardsElement.append(card);
  }

  function showResult(result) {
    const card = cards.get(result.key);
    if (!card) return;
    const error = card.querySelector(".error");
    const items = card.querySelectorAll(".bars li");
    if (result.error) {
      card.dataset.state = "failed";
      error.hidden = false;
      error.textContent = result.error;
      card.querySelector(".predicted-class").textContent = "–";
      card.querySelector(".confidence").textContent = "";
      card.querySelector(".latency").textContent = "–";
      card.querySelector(".version").textContent = "–";
      card.querySelector(".format").textContent = "–";
      items.forEach((item) => {
        item.classList.remove("top");
        item.querySelector(".fill").style.width = "0";
        item.querySelector(".value").textContent = "";
        delete item.dataset.probability;
      });
      return;
    }
    card.dataset.state = "answered";
    error.hidden = true;
    error.textContent = "";
    card.querySelector(".predicted-class").textContent = String(result.class);
    card.querySelector(".confidence").textContent = `${(100 * result.probabilities[result.class]).toFixed(1)} %`;
    const latency = card.querySelector(".latency");
    latency.textContent = `${result.latency_ms.toFixed(2)} ms`;
    latency.dataset.milliseconds = String(result.latency_ms);
    card.querySelector(".version").textContent = result.version
      ? `${result.version} (${result.version_source})`
      : `not reported (${result.version_source})`;
    card.querySelector(".format").textContent = result.format || "not reported";
    items.forEach((item, digit) => {
      const probability = result.probabilities[digit];
      item.dataset.probability = String(probability);
      item.classList.toggle("top", digit === result.class);
      item.querySelector(".fill").style.width = `${(100 * probability).toFixed(1)}%`;
      item.querySelector(".value").textContent = `${(100 * probability).toFixed(1)} %`;
    });
  }

  // ---- talking to the backend ---------------------------------------------------------------------------------

  async function call(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch {
      throw new Error("The playground's backend did not answer; is `make playground` still running?");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `The backend answered HTTP ${response.status}.`);
    return body;
  }

  async function busy(task) {
    buttons.forEach((button) => { button.disabled = true; });
    try {
      await task();
    } catch (error) {
      statusLine.textContent = error.message;
    } finally {
      buttons.forEach((button) => { button.disabled = false; });
    }
  }

  async function predict() {
    if (!testImage && !inked) {
      statusLine.textContent = "Draw a digit first, or pick a random test image.";
      return;
    }
    const body = testImage
      ? { image: testImage.image }
      : { drawing: { width: canvas.width, height: canvas.height, pixels: inkAsBase64() } };
    statusLine.textContent = "Asking every server…";
    cards.forEach((card) => { card.dataset.state = "busy"; });
    let answer;
    try {
      answer = await call("/api/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (error) {
      cards.forEach((card) => { card.dataset.state = "idle"; });
      throw error;
    }
    showInput(answer.input);
    answer.results.forEach(showResult);
    // Counts finished predictions, so that a test (or a curious reader) can tell when the cards are up to date.
    document.body.dataset.predictions = String(Number(document.body.dataset.predictions || 0) + 1);
    const failed = answer.results.filter((result) => result.error).length;
    statusLine.textContent = failed
      ? `${answer.results.length - failed} of ${answer.results.length} servers answered.`
      : `All ${answer.results.length} servers answered.`;
  }

  async function loadTestImage(index) {
    const query = index === undefined ? "" : `?index=${encodeURIComponent(index)}`;
    const picked = await call(`/api/test-image${query}`);
    clearInput();
    testImage = picked;
    drawTestImage(picked.image);
    showInput(picked.image);
    sourceCaption.textContent = `Test image ${picked.index} of ${picked.count}, labelled ${picked.label}`;
    sourceCaption.dataset.label = String(picked.label);
    history.replaceState(null, "", `#test-image=${picked.index}`); // a link that shows this image again
    await predict();
  }

  document.getElementById("predict").addEventListener("click", () => busy(predict));
  document.getElementById("clear").addEventListener("click", () => {
    clearInput();
    statusLine.textContent = "";
  });
  document.getElementById("random").addEventListener("click", () => busy(() => loadTestImage()));

  busy(async () => {
    const listing = await call("/api/endpoints");
    document.getElementById("model").textContent = `Model: ${listing.model}`;
    listing.endpoints.forEach(makeCard);
    const linked = /^#test-image=(\d+)$/.exec(location.hash);
    if (linked) await loadTestImage(Number(linked[1]));
  }).then(() => { document.body.dataset.ready = "true"; });
})();
