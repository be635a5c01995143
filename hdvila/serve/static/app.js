// The search page. Text from the index (captions, file names) is only ever set through textContent, never
// parsed as HTML; the page talks to the same JSON API a script would.
"use strict";

const $ = (id) => document.getElementById(id);
let about = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
  if (!response.ok) throw new Error((body && body.error) || `request failed (${response.status})`);
  return body;
}

function recallParams() {
  const params = new URLSearchParams({ k: $("k").value });
  if (about && about.nlist && $("nprobe").value) params.set("nprobe", $("nprobe").value);
  if (about && about.kind === "hnsw" && $("ef").value) params.set("ef", $("ef").value);
  return params;
}

function spanText(span) {
  return span ? `${span[0].toFixed(1)}–${span[1].toFixed(1)} s` : "";
}

function renderHits(hits) {
  const results = $("results");
  results.replaceChildren();
  for (const hit of hits) {
    const card = $("hit-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    card.dataset.score = hit.score;
    const img = card.querySelector("img");
    if (hit.thumbnail) {
      img.src = hit.thumbnail;
      img.addEventListener("error", () => { img.remove(); card.querySelector(".thumb").classList.add("missing"); });
    } else {
      img.remove();
      card.querySelector(".thumb").classList.add("missing");
    }
    card.querySelector(".caption").textContent = hit.caption;
    card.querySelector(".rank").textContent = `#${hit.rank}`;
    card.querySelector(".score").textContent = `score ${hit.score === null ? "–" : hit.score.toFixed(3)}`;
    card.querySelector(".source").textContent = [hit.source, spanText(hit.span)].filter(Boolean).join(" · ");
    card.addEventListener("click", (event) => {
      if (!event.target.closest("button")) play(hit, card);
    });
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") play(hit, card); });
    card.querySelector(".like").addEventListener("click", () => moreLike(hit.id));
    results.appendChild(card);
  }
}

function play(hit, card) {
  if (!hit.video) { setStatus("this index cannot play clips: rebuild it with `hdvila retrieval index`", true); return; }
  document.querySelectorAll(".hit.playing").forEach((c) => c.classList.remove("playing"));
  card.classList.add("playing");
  const video = $("video");
  video.src = hit.video;
  $("now-playing").textContent = `${hit.caption} (${[hit.source, spanText(hit.span)].filter(Boolean).join(" · ")})`;
  $("player-like").dataset.id = hit.id;
  $("player").hidden = false;
  video.play().catch((err) => setStatus(`cannot play this clip: ${err.message}`, true));
}

async function run(url, describe) {
  setStatus("searching…");
  $("search-button").disabled = true;
  try {
    const answer = await getJSON(url);
    renderHits(answer.hits);
    const effort = answer.nprobe ? `, nprobe ${answer.nprobe}` : answer.ef ? `, ef ${answer.ef}` : "";
    setStatus(`${answer.hits.length} clips ${describe(answer)} in ${answer.took_ms.toFixed(0)} ms${effort}`);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(err.message, true);
  } finally {
    $("search-button").disabled = false;
  }
}

function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) { setStatus("type a sentence to search for", true); return; }
  const params = recallParams();
  params.set("q", query);
  run(`/api/search?${params}`, () => "for your text");
}

function moreLike(id) {
  const params = recallParams();
  params.set("id", id);
  run(`/api/similar?${params}`, (answer) => `like “${answer.like.caption}”`);
}

async function start() {
  $("search-form").addEventListener("submit", search);
  $("player-close").addEventListener("click", () => { $("video").pause(); $("player").hidden = true; });
  $("player-like").addEventListener("click", () => moreLike($("player-like").dataset.id));
  try {
    about = await getJSON("/api/info");
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  $("query").maxLength = about.limits.max_query_chars;
  $("about").textContent = `${about.count} clips · ${about.kind} index` + (about.model ? ` · model ${about.model}` : "");
  $("nprobe-label").hidden = !about.nlist;
  $("ef-label").hidden = about.kind !== "hnsw";
  $("exact-note").hidden = about.kind !== "flat";
  for (const name of ["nprobe", "ef"]) {
    $(name).max = about.limits.max_effort;
    if (about.defaults[name]) $(name).value = about.defaults[name];
  }
  if (!about.playback) setStatus("this index has no video locations: results cannot play (rebuild the index)", true);
}

start();
