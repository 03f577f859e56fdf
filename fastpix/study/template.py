"""The study page: one HTML file with its style and script inline (no external assets), the study embedded as JSON.

The script runs the paper's protocol. Per trial: a fixation cross for gap_ms while both images load, the pair for
exposure_ms (timed from the moment both are decoded and shown), then blank boxes and the question, with no time
limit; practice trials then show feedback for feedback_ms. Answers: click a box or its button, or the keys
←/F (left was fake) and →/J (right was fake). The observer id (?observer=ID, else a random one) and the study seed
fix the model (?model=NAME overrides), the image order and the sides, through a seeded PRNG (FNV-1a + mulberry32).
At the end the session is POSTed to api/answers; opened from a file (no server), it is offered as a download.
window.study exposes the state (plan, index, state, trials) for tests.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Which image is fake?</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: sans-serif; background: #f4f4f4; color: #222; margin: 0; text-align: center; }
main { max-width: 860px; margin: 0 auto; padding: 16px; }
#pair { display: flex; justify-content: center; gap: 32px; margin: 8px 0; position: relative; }
.slot { display: flex; flex-direction: column; align-items: center; gap: 8px; }
.box { width: __SIZE__px; height: __SIZE__px; background: #bbb; border: 2px solid #888; cursor: pointer; }
.box img { width: 100%; height: 100%; object-fit: contain; display: block; visibility: hidden; }
#cross { position: absolute; top: calc(__SIZE__px / 2 - 20px); font-size: 40px; visibility: hidden; }
button { font-size: 16px; padding: 8px 16px; cursor: pointer; }
#message { min-height: 26px; font-size: 18px; margin-top: 6px; }
h2 { margin: 8px 0 12px; }
#feedback.right { color: #17702b; } #feedback.wrong { color: #b00020; }
.hidden { display: none !important; }
#progress { color: #666; }
</style></head>
<body><main>
<h2>Real or fake?</h2>
<section id="intro">
<p>Each trial shows two photos side by side for a moment. One is a real photo, the other was made by a computer.
After they disappear, say which one was <b>fake</b>: click it, or press <b>&larr;</b> / <b>F</b> for the left one,
<b>&rarr;</b> / <b>J</b> for the right one. Take as long as you need to answer.</p>
<p>The first <span id="n-practice"></span> trials are practice and tell you whether you were right;
the <span id="n-scored"></span> that follow do not.</p>
<button id="start">Start (space)</button>
<p id="observer-line"></p>
</section>
<section id="run" class="hidden">
<div id="progress"></div>
<div id="message"><span id="prompt"></span><span id="feedback"></span></div>
<div id="pair">
 <div class="slot"><div class="box" id="box-left"><img id="left" alt=""></div>
  <button id="answer-left" disabled>Left was fake (&larr; / F)</button></div>
 <div id="cross">+</div>
 <div class="slot"><div class="box" id="box-right"><img id="right" alt=""></div>
  <button id="answer-right" disabled>Right was fake (&rarr; / J)</button></div>
</div>
</section>
<section id="end" class="hidden"><p id="end-message"></p><button id="retry" class="hidden">Send again</button>
<p><a id="download" class="hidden" download="answers.json">Download your answers</a></p></section>
</main>
<script id="study-data" type="application/json">__STUDY__</script>
<script>
"use strict";
const S = JSON.parse(document.getElementById("study-data").textContent);
const P = S.protocol;
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function fnv1a(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619); }
  return h >>> 0;
}
function mulberry32(a) {
  return function () {
    a = (a + 0x6D2B79F5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function shuffle(items, rand) {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [items[i], items[j]] = [items[j], items[i]];
  }
  return items;
}
function randomId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The session plan: practice, then scored trials with the attention checks among them (never first or last).
function makePlan(model, rand) {
  const order = shuffle(model.stems.slice(), rand);
  const need = P.practice_trials + P.scored_trials;
  const side = () => (rand() < 0.5 ? "left" : "right");
  const pick = (i) => order[i % order.length];
  const plan = [];
  for (let i = 0; i < P.practice_trials; i++) plan.push({ kind: "practice", stem: pick(i), fake_side: side() });
  const scored = [];
  for (let i = P.practice_trials; i < need; i++) scored.push({ kind: "scored", stem: pick(i), fake_side: side() });
  for (let k = 0; k < P.attention_checks; k++) {
    const at = 1 + Math.floor(rand() * Math.max(scored.length - 1, 1));
    scored.splice(at, 0, { kind: "attention", stem: order[Math.floor(rand() * order.length)], fake_side: side() });
  }
  return plan.concat(scored);
}

const params = new URLSearchParams(location.search);
const observer = (params.get("observer") || randomId()).slice(0, 200);
const rand = mulberry32(fnv1a(P.seed + ":" + observer));
const wanted = params.get("model");
let modelIndex = S.models.findIndex((m) => m.name === wanted);
if (modelIndex < 0) modelIndex = Math.floor(rand() * S.models.length);
const model = S.models[modelIndex];
const study = window.study = { observer, model: model.name, plan: makePlan(model, rand), index: -1,
                               state: "intro", trials: [], started: null };

function source(trial, which) {  // which: "fake" or "real"
  if (trial.kind === "attention" && which === "fake") return S.blank;
  return model.folder + "/" + encodeURIComponent(trial.stem) + (which === "fake" ? "_fake_B.png" : "_real_B.png");
}
function setState(state) { study.state = state; document.body.dataset.state = state; }
function showImages(visible) {
  for (const id of ["left", "right"]) $(id).style.visibility = visible ? "visible" : "hidden";
}
function enableAnswers(on) { $("answer-left").disabled = $("answer-right").disabled = !on; }

let answerWith = null;
function answer(side) {
  if (study.state !== "question" || !answerWith) return;
  const resolve = answerWith;
  answerWith = null;
  resolve(side);
}
document.addEventListener("keydown", (e) => {
  if (study.state === "intro" && (e.key === " " || e.key === "Enter")) { e.preventDefault(); start(); return; }
  const side = { ArrowLeft: "left", f: "left", F: "left", ArrowRight: "right", j: "right", J: "right" }[e.key];
  if (side) { e.preventDefault(); answer(side); }
});
for (const side of ["left", "right"]) {
  $("answer-" + side).addEventListener("click", () => answer(side));
  $("box-" + side).addEventListener("click", () => answer(side));
}

async function runTrial(trial, number) {
  const practice = trial.kind === "practice";
  $("progress").textContent = practice ? `Practice ${number + 1} of ${P.practice_trials}`
    : `Trial ${number + 1 - P.practice_trials} of ${study.plan.length - P.practice_trials}`;
  $("prompt").textContent = ""; $("feedback").textContent = ""; $("feedback").className = "";
  setState("fixation");
  showImages(false); enableAnswers(false);
  $("cross").style.visibility = "visible";
  const realSide = trial.fake_side === "left" ? "right" : "left";
  $(trial.fake_side).src = source(trial, "fake");
  $(realSide).src = source(trial, "real");
  await Promise.all([sleep(P.gap_ms), $("left").decode().catch(() => {}), $("right").decode().catch(() => {})]);
  $("cross").style.visibility = "hidden";
  setState("exposure");
  showImages(true);
  const shown = performance.now();
  await sleep(P.exposure_ms);
  showImages(false);
  const shownMs = performance.now() - shown;
  $("prompt").textContent = "Which image was fake?";
  enableAnswers(true);
  setState("question");
  const asked = performance.now();
  const side = await new Promise((resolve) => { answerWith = resolve; });
  const record = { index: number, kind: trial.kind, stem: trial.stem, fake_side: trial.fake_side, answer: side,
                   rt_ms: Math.round(performance.now() - asked), shown_ms: Math.round(shownMs) };
  study.trials.push(record);
  enableAnswers(false);
  $("prompt").textContent = "";
  if (practice) {
    const right = side === trial.fake_side;
    $("feedback").className = right ? "right" : "wrong";
    $("feedback").textContent = right ? "Correct: that one was fake."
      : `Not quite: the fake was on the ${trial.fake_side}.`;
    setState("feedback");
    await sleep(P.feedback_ms);
  }
}

function session() {
  return { study_id: S.study_id, observer, model: model.name, started: study.started,
           finished: new Date().toISOString(), user_agent: navigator.userAgent, trials: study.trials };
}
function offerDownload(text) {
  const link = $("download");
  link.href = URL.createObjectURL(new Blob([JSON.stringify(session())], { type: "application/json" }));
  link.classList.remove("hidden");
  $("end-message").textContent = text;
}
async function submit() {
  $("retry").classList.add("hidden");
  if (location.protocol === "file:") {
    setState("offline");
    offerDownload("Done, thank you. This page was opened from a file, so nothing was sent: download your answers.");
    return;
  }
  setState("sending");
  $("end-message").textContent = "Sending your answers…";
  try {
    const response = await fetch("api/answers", { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body: JSON.stringify(session()) });
    if (!response.ok) throw new Error((await response.text()).slice(0, 300));
    setState("saved");
    $("end-message").textContent = "Done, thank you: your answers are saved.";
  } catch (err) {
    setState("save_failed");
    $("retry").classList.remove("hidden");
    offerDownload("Your answers could not be sent (" + err.message + "). Send again, or download them.");
  }
}
$("retry").addEventListener("click", submit);

async function start() {
  if (study.state !== "intro") return;
  setState("starting");
  study.started = new Date().toISOString();
  $("intro").classList.add("hidden"); $("run").classList.remove("hidden");
  for (let i = 0; i < study.plan.length; i++) {
    study.index = i;
    await runTrial(study.plan[i], i);
  }
  $("run").classList.add("hidden"); $("end").classList.remove("hidden");
  await submit();
}
$("start").addEventListener("click", start);
$("n-practice").textContent = P.practice_trials;
$("n-scored").textContent = P.scored_trials + P.attention_checks;
$("observer-line").textContent = "Observer " + observer;
setState("intro");
</script></body></html>
"""
