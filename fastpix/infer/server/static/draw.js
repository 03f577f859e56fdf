/* The draw page of `fastpix serve` (fastpix/infer/server/page.py): draw on the input canvas, see the model's output.

The drawing is an ImageData the tools paint pixel by pixel (integer discs, rectangles, a flood fill), so that a
label map holds only the palette's exact colours: no anti-aliasing anywhere. Live translation: after each stroke,
and every THROTTLE_MS during one, the canvas goes to v1/translate as a PNG; one request at most is in flight, and
when it returns the newest drawing is sent if it changed meanwhile. An answer whose drawing was replaced (undo,
redo, clear, upload, example) is dropped. Nothing bigger than the server's --max-bytes / --max-pixels (v1/info) is
sent; a refusal shows the server's own words.

window.draw is the page's state, for tests: version (bumped by every change), sentVersion, shownVersion, epoch
(bumped when the drawing is replaced), inFlight, dropped, latencyMs, idle(). */
"use strict";

const THROTTLE_MS = 100;  // during a stroke, a translation at most this often
const HISTORY_BYTES = 64 * 2 ** 20;  // undo snapshots kept, at most
const BITMAP = {premultiplyAlpha: "none", colorSpaceConversion: "none"};  // pixels as they are in the file

const $ = (id) => document.getElementById(id);
const state = {
  info: null, N: 0, ready: false, tool: "pen", colour: [0, 0, 0], clear: [255, 255, 255], labels: false,
  version: 0, sentVersion: -1, shownVersion: -1, epoch: 0, inFlight: false, timer: null, lastSent: 0,
  dropped: 0, latencyMs: null, stroke: null, undo: [], redo: [], example: null,
  idle() {
    return this.ready && !this.inFlight && this.timer === null && this.stroke === null
      && this.sentVersion === this.version;
  },
};
window.draw = state;

let input, inputCtx, outputCtx, targetCtx, image, pixels;

// ---------------------------------------------------------------------------------------------- painting

function put(x, y, rgb) {
  if (x < 0 || y < 0 || x >= state.N || y >= state.N) return;
  const i = (y * state.N + x) * 4;
  pixels[i] = rgb[0]; pixels[i + 1] = rgb[1]; pixels[i + 2] = rgb[2]; pixels[i + 3] = 255;
}

function stamp(cx, cy, width, rgb) {  // a disc `width` pixels across (width 1: one pixel)
  const reach = Math.ceil(width / 2), r2 = (width / 2) ** 2 + 0.25;
  for (let dy = -reach; dy <= reach; dy++) {
    for (let dx = -reach; dx <= reach; dx++) {
      if (dx * dx + dy * dy < r2) put(cx + dx, cy + dy, rgb);
    }
  }
}

function line(x0, y0, x1, y1, width, rgb) {
  const n = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0));
  for (let i = 0; i <= n; i++) {
    const t = n ? i / n : 0;
    stamp(Math.round(x0 + (x1 - x0) * t), Math.round(y0 + (y1 - y0) * t), width, rgb);
  }
}

function rectangle(x0, y0, x1, y1, rgb) {  // corners included
  for (let y = Math.min(y0, y1); y <= Math.max(y0, y1); y++) {
    for (let x = Math.min(x0, x1); x <= Math.max(x0, x1); x++) put(x, y, rgb);
  }
}

function floodFill(x, y, rgb) {  // the 4-connected region of (x, y)'s exact colour; false if already rgb
  const N = state.N, start = (y * N + x) * 4;
  const from = [pixels[start], pixels[start + 1], pixels[start + 2], pixels[start + 3]];
  if (from[0] === rgb[0] && from[1] === rgb[1] && from[2] === rgb[2] && from[3] === 255) return false;
  const stack = [y * N + x];
  while (stack.length) {
    const p = stack.pop(), i = p * 4;
    if (pixels[i] !== from[0] || pixels[i + 1] !== from[1] || pixels[i + 2] !== from[2]
        || pixels[i + 3] !== from[3]) continue;
    pixels[i] = rgb[0]; pixels[i + 1] = rgb[1]; pixels[i + 2] = rgb[2]; pixels[i + 3] = 255;
    const px = p % N;
    if (px > 0) stack.push(p - 1);
    if (px < N - 1) stack.push(p + 1);
    if (p >= N) stack.push(p - N);
    if (p < N * (N - 1)) stack.push(p + N);
  }
  return true;
}

function toGrey(data) {  // PIL's convert("L"): what a 1-channel model sees
  for (let i = 0; i < data.length; i += 4) {
    const l = (data[i] * 19595 + data[i + 1] * 38470 + data[i + 2] * 7471 + 0x8000) >> 16;
    data[i] = data[i + 1] = data[i + 2] = l;
  }
}

function render() { inputCtx.putImageData(image, 0, 0); }

function fillCanvas(ctx, rgb) {
  ctx.fillStyle = `rgb(${rgb.join(",")})`;
  ctx.fillRect(0, 0, state.N, state.N);
}

function scratch(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  return canvas.getContext("2d", {willReadFrequently: true});
}

// ---------------------------------------------------------------------------------------------- history

function remember(before) {
  state.undo.push(before);
  const keep = Math.max(1, Math.floor(HISTORY_BYTES / before.length));
  if (state.undo.length > keep) state.undo.splice(0, state.undo.length - keep);
  state.redo = [];
  updateButtons();
}

function replaceDrawing(data) {  // an upload, an example, a clear: one undo step, and a new epoch
  remember(pixels.slice());
  pixels.set(data);
  if (state.info.input_nc === 1) toGrey(pixels);
  render();
  changed(true);
}

function step(from, to) {  // undo (from = undo, to = redo) or redo
  if (state.stroke || !from.length) return;
  to.push(pixels.slice());
  pixels.set(from.pop());
  render();
  updateButtons();
  changed(true);
}

const undo = () => step(state.undo, state.redo);
const redo = () => step(state.redo, state.undo);

function updateButtons() {
  $("undo").disabled = !state.undo.length;
  $("redo").disabled = !state.redo.length;
}

// ---------------------------------------------------------------------------------------------- strokes

function pixelAt(e) {
  const box = input.getBoundingClientRect();
  const x = (e.clientX - box.left - input.clientLeft) * state.N / input.clientWidth;
  const y = (e.clientY - box.top - input.clientTop) * state.N / input.clientHeight;
  return [Math.floor(x), Math.floor(y)];
}

const clamp = (v) => Math.min(state.N - 1, Math.max(0, v));

function paintStroke(s, x, y) {
  if (s.tool === "rect") {
    pixels.set(s.before);
    rectangle(clamp(s.x0), clamp(s.y0), clamp(x), clamp(y), state.colour);
  } else {
    const eraser = s.tool === "eraser";
    line(s.x, s.y, x, y, Number($(eraser ? "eraser-width" : "pen-width").value), eraser ? state.clear : state.colour);
  }
  s.x = x; s.y = y;
}

function startStroke(e) {
  // The primary button, a pen's contact or a touch; a pen's eraser end (button 5) erases.
  if (state.stroke || !(e.button === 0 || e.button === 5)) return;
  e.preventDefault();
  const [x, y] = pixelAt(e);
  const tool = e.button === 5 ? "eraser" : state.tool;
  const s = {id: e.pointerId, tool, before: pixels.slice(), x0: x, y0: y, x, y};
  if (tool === "fill") {  // a click, not a stroke
    const inside = x >= 0 && y >= 0 && x < state.N && y < state.N;
    if (inside && floodFill(x, y, state.colour)) {
      render();
      remember(s.before);
      changed(false);
    }
    return;
  }
  input.setPointerCapture(e.pointerId);
  state.stroke = s;
  paintStroke(s, x, y);
  render();
  changed(false);
}

function moveStroke(e) {
  const s = state.stroke;
  if (!s || e.pointerId !== s.id) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  let moved = false;
  for (const each of events.length ? events : [e]) {
    const [x, y] = pixelAt(each);
    if (x !== s.x || y !== s.y) {
      paintStroke(s, x, y);
      moved = true;
    }
  }
  if (moved) {
    render();
    changed(false);
  }
}

function endStroke(e) {  // one undo step per stroke, if it changed a pixel
  const s = state.stroke;
  if (!s || e.pointerId !== s.id) return;
  state.stroke = null;
  let differs = false;
  for (let i = 0; i < pixels.length && !differs; i++) differs = pixels[i] !== s.before[i];
  if (differs) remember(s.before);
  schedule();  // the stroke is over: no throttle
}

// ---------------------------------------------------------------------------------------------- translation

function changed(replaced) {
  state.version++;
  if (replaced) state.epoch++;
  schedule();
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = null;
  if (!state.ready || state.inFlight || state.sentVersion === state.version) return;
  const wait = state.stroke ? state.lastSent + THROTTLE_MS - performance.now() : 0;
  if (wait > 0) state.timer = setTimeout(schedule, wait);
  else translate();
}

// The canvas as a PNG blob, encoded now. Not toBlob: Chromium encodes it in an idle period, and while a page is
// busy (drawing) or not painting (headless) that waited up to its 1 s fallback: 1,016 ms round trips measured for
// 12 ms requests. toDataURL encodes synchronously (a few ms at 256²); its base64 is decoded here because the page's
// Content-Security-Policy rightly lets fetch() reach no data: URL.
function png(canvas) {
  const base64 = canvas.toDataURL("image/png").slice("data:image/png;base64,".length);
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return Promise.resolve(new Blob([bytes], {type: "image/png"}));
}

function refusal(blob) {  // why the server would refuse this drawing, or null
  const info = state.info, side = Math.ceil(state.N / info.multiple) * info.multiple;
  if (side * side > info.max_pixels) {
    return `the canvas pads to ${side}x${side} pixels; this server accepts at most ${info.max_pixels} (--max-pixels)`;
  }
  if (blob.size > info.max_bytes) {
    return `the drawing is ${blob.size} bytes as PNG; this server accepts at most ${info.max_bytes} (--max-bytes)`;
  }
  return null;
}

async function errorText(response) {
  try {
    return `the server refused (${response.status}): ${(await response.json()).error}`;
  } catch {
    return `the server answered ${response.status} ${response.statusText}`;
  }
}

async function translate() {
  const version = state.version, epoch = state.epoch, started = performance.now();
  state.inFlight = true;
  state.sentVersion = version;
  state.lastSent = started;
  let answer = null, error = null;
  try {
    const blob = await png(input);  // encoded now: later strokes are not in it
    error = refusal(blob);
    if (!error) {
      const response = await fetch("v1/translate", {method: "POST", body: blob,
                                                    headers: {"Content-Type": "image/png", "Accept": "image/png"}});
      if (response.ok) answer = await createImageBitmap(await response.blob(), BITMAP);
      else error = await errorText(response);
    }
  } catch (exc) {
    error = `no answer from the server (${exc.message})`;
  }
  const ms = performance.now() - started;
  state.inFlight = false;
  if (epoch !== state.epoch) {
    state.dropped++;  // its drawing was replaced: the newest goes next
  } else if (error) {
    showMessage(error, true);
  } else {
    outputCtx.clearRect(0, 0, state.N, state.N);
    outputCtx.drawImage(answer, 0, 0);
    state.shownVersion = version;
    state.latencyMs = ms;
    $("latency").textContent = `${Math.round(ms)} ms`;
    showMessage("");
  }
  if (answer) answer.close();
  schedule();
}

// ---------------------------------------------------------------------------------------------- images in and out

async function loadFile(file) {
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, BITMAP);
  } catch {
    showMessage(`${file.name}: not an image this browser can read`, true);
    return;
  }
  const N = state.N, scale = Math.min(N / bitmap.width, N / bitmap.height);
  const w = Math.max(1, Math.round(bitmap.width * scale)), h = Math.max(1, Math.round(bitmap.height * scale));
  const ctx = scratch(N, N);
  fillCanvas(ctx, state.clear);
  ctx.imageSmoothingEnabled = !state.labels;  // a label map keeps its exact colours
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, Math.floor((N - w) / 2), Math.floor((N - h) / 2), w, h);
  bitmap.close();
  showTarget(null);
  replaceDrawing(ctx.getImageData(0, 0, N, N).data);
}

async function randomExample() {
  const count = state.info.examples;
  let index = Math.floor(Math.random() * count);
  if (count > 1 && state.example && index === state.example.index) index = (index + 1) % count;
  try {
    const response = await fetch(`v1/examples/${index}`);
    if (!response.ok) {
      showMessage(await errorText(response), true);
      return;
    }
    const name = decodeURIComponent(response.headers.get("X-Fastpix-Example") || String(index));
    const pair = await createImageBitmap(await response.blob(), BITMAP);  // input | target, each N × N
    const ctx = scratch(state.N, state.N);
    ctx.drawImage(pair, 0, 0, state.N, state.N, 0, 0, state.N, state.N);
    showTarget(pair, name);
    pair.close();
    state.example = {index, name};
    replaceDrawing(ctx.getImageData(0, 0, state.N, state.N).data);
  } catch (exc) {
    showMessage(`no example from the server (${exc.message})`, true);
  }
}

function showTarget(pair, name) {
  $("target-panel").classList.toggle("hidden", !pair);
  if (!pair) return;
  targetCtx.clearRect(0, 0, state.N, state.N);
  targetCtx.drawImage(pair, state.N, 0, state.N, state.N, 0, 0, state.N, state.N);
  $("example-name").textContent = name;
}

async function save() {  // input | output, one PNG
  const N = state.N, ctx = scratch(2 * N, N);
  ctx.drawImage(input, 0, 0);
  ctx.drawImage($("output"), N, 0);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await png(ctx.canvas));
  link.download = `fastpix-${new Date().toISOString().replace(/[:.]/g, "-")}.png`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

// ---------------------------------------------------------------------------------------------- controls

function showMessage(text, error = false) {
  $("message").textContent = text;
  $("status").classList.toggle("error", error);
}

function chooseTool(tool) {
  state.tool = tool;
  for (const name of ["pen", "eraser", "rect", "fill"]) $(name).setAttribute("aria-pressed", name === tool);
}

function chooseColour(button, rgb) {
  state.colour = rgb;
  for (const b of document.querySelectorAll("#palette button")) b.setAttribute("aria-checked", b === button);
  if (state.tool === "eraser") chooseTool("pen");
}

function buildPalette(palette) {
  const box = $("palette");
  box.classList.remove("hidden");
  let first = null;
  for (const c of palette.classes) {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "radio");
    button.setAttribute("data-testid", `palette-${c.id}`);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.rgb.join(",")})`;
    button.append(swatch, c.name);
    button.addEventListener("click", () => chooseColour(button, c.rgb));
    box.append(button);
    if (c.id === palette.clear_id) state.clear = c.rgb;
    else if (!first) first = [button, c.rgb];
  }
  if (first) chooseColour(...first);
  else chooseColour(box.firstChild, state.clear);
}

function bindWidth(id, value) {
  const slider = $(id);
  slider.value = value;
  const show = () => { $(`${id}-value`).textContent = slider.value; };
  slider.addEventListener("input", show);
  show();
}

function bindControls() {
  input.addEventListener("pointerdown", startStroke);
  input.addEventListener("pointermove", moveStroke);
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) input.addEventListener(type, endStroke);
  for (const tool of ["pen", "eraser", "rect", "fill"]) $(tool).addEventListener("click", () => chooseTool(tool));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("clear").addEventListener("click", () => {
    const ctx = scratch(state.N, state.N);
    fillCanvas(ctx, state.clear);
    showTarget(null);
    replaceDrawing(ctx.getImageData(0, 0, state.N, state.N).data);
  });
  $("upload").addEventListener("change", (e) => { loadFile(e.target.files[0]); e.target.value = ""; });
  $("random").addEventListener("click", randomExample);
  $("save").addEventListener("click", save);
  document.addEventListener("keydown", (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.altKey) return;
    const key = e.key.toLowerCase();
    if (key === "z") { e.preventDefault(); if (e.shiftKey) redo(); else undo(); }
    if (key === "y") { e.preventDefault(); redo(); }
  });
  // A file dropped anywhere is loaded, never opened by the browser in place of the page.
  const panel = $("input-panel");
  document.addEventListener("dragover", (e) => { e.preventDefault(); panel.classList.add("dropping"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) panel.classList.remove("dropping"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    panel.classList.remove("dropping");
    loadFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
}

async function waitUntilReady() {
  $("warming").classList.remove("hidden");
  for (;;) {
    try {
      const response = await fetch("readyz");
      if (response.ok) break;
      showMessage(`the model is ${(await response.json()).reason || "not ready"}…`);
    } catch {
      showMessage("waiting for the server…");
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  $("warming").classList.add("hidden");
  showMessage("");
  state.ready = true;
  schedule();
}

async function start() {
  input = $("input");
  let info;
  try {
    const response = await fetch("v1/info");
    if (!response.ok) throw new Error(await errorText(response));
    info = await response.json();
  } catch (exc) {
    showMessage(`the server did not describe its model: ${exc.message}`, true);
    return;
  }
  const N = info.canvas_size;
  Object.assign(state, {info, N, labels: Boolean(info.palette)});
  $("model").textContent = `${info.model} · ${info.description}`
    + (info.input_nc === 1 ? " · grey input" : "") + ` · ${N}×${N}`;
  for (const id of ["input", "output", "target"]) { $(id).width = N; $(id).height = N; }
  inputCtx = input.getContext("2d", {willReadFrequently: true});
  outputCtx = $("output").getContext("2d", {willReadFrequently: true});
  targetCtx = $("target").getContext("2d");
  for (const ctx of [inputCtx, outputCtx, targetCtx]) ctx.imageSmoothingEnabled = false;
  if (info.palette) buildPalette(info.palette);
  bindWidth("pen-width", info.palette ? Math.max(1, Math.round(N / 32)) : 1);
  bindWidth("eraser-width", Math.max(3, Math.round(15 * N / 256)));
  chooseTool(info.palette ? "rect" : "pen");
  $("random").disabled = !info.examples;
  $("random").title = info.examples ? `one of ${info.examples} examples` : "start the server with --examples DIR";
  fillCanvas(inputCtx, state.clear);
  image = inputCtx.getImageData(0, 0, N, N);
  pixels = image.data;
  const pixelated = () => $("input").closest(".panels").classList.toggle("pixelated", input.clientWidth >= 2 * N);
  window.addEventListener("resize", pixelated);
  pixelated();
  bindControls();
  updateButtons();
  if (info.examples) await randomExample(); else changed(true);
  waitUntilReady();  // the first translation is of the first drawing
}

start();
