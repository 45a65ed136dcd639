// llm-proxy explorer: the little the pages need a script for. Everything works without it but
// live updates, raw JSON shown in place, and long texts opened in place. Text from the logs is
// only ever put into the page as textContent; HTML comes from the explorer's own templates.
"use strict";

function pretty(entry) {
  // A logged body is a JSON string: shown parsed, so that it reads as JSON, not as one line.
  if (entry && typeof entry.body === "string" && !entry.body_encoding) {
    try { entry = Object.assign({}, entry, { body: JSON.parse(entry.body) }); } catch (e) { /* not JSON */ }
  }
  return JSON.stringify(entry, null, 2);
}

function loadRaw(details) {
  if (details.dataset.loaded) return;
  details.dataset.loaded = "1";
  const out = details.querySelector(".raw-json");
  fetch(details.dataset.src, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
    .then((doc) => { out.textContent = "// request\n" + pretty(doc.request) + "\n\n// response\n" + pretty(doc.response); })
    .catch((e) => { out.textContent = "Could not load: " + e.message; delete details.dataset.loaded; });
}

function showAll(link) {
  const holder = link.closest("p");
  const target = link.hasAttribute("data-raw") ? link.closest("dl") : holder && holder.previousElementSibling;
  if (!target) return false;
  link.textContent = "Loading…";
  fetch(link.href, { credentials: "same-origin" })
    .then((r) => (r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status))))
    .then((text) => {
      const pre = document.createElement("pre");
      pre.className = target.tagName === "PRE" ? target.className : "mono";
      pre.textContent = text;
      target.replaceWith(pre);
      holder.remove();
    })
    .catch((e) => { link.textContent = "Could not load (" + e.message + "): open it"; link.removeAttribute("data-more"); });
  return true;
}

document.addEventListener("toggle", (event) => {
  const details = event.target;
  if (details.matches && details.matches("details.raw") && details.open) loadRaw(details);
}, true);

document.addEventListener("click", (event) => {
  const link = event.target.closest && event.target.closest("a[data-more]");
  if (link && !event.ctrlKey && !event.metaKey && showAll(link)) event.preventDefault();
});

// Filters apply as soon as they change (the form still has its button without a script).
document.addEventListener("change", (event) => {
  const form = event.target.closest && event.target.closest("form[data-autosubmit]");
  if (form && event.target.matches("select, input[type=checkbox]")) form.requestSubmit();
});

// A filter left empty stays out of the address: /sessions?client=codex, not …&model=&machine=.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches("form.filters")) return;
  Array.from(form.elements).forEach((el) => {
    if (el.name && !el.value && el.type !== "submit") el.disabled = true;
  });
  setTimeout(() => Array.from(form.elements).forEach((el) => { el.disabled = false; }), 0);
});

function openState(node) {
  return Array.from(node.querySelectorAll("details")).map((d) => d.open);
}

function place(calls, item) {
  const tpl = document.createElement("template");
  tpl.innerHTML = item.html;
  const node = tpl.content.firstElementChild;
  if (!node) return;
  const old = document.getElementById("call-" + item.seq);
  if (old) {
    const open = openState(old);
    node.querySelectorAll("details").forEach((d, i) => { if (open[i]) d.open = true; });
    old.replaceWith(node);
  } else {
    const empty = calls.querySelector(":scope > p.quiet");
    if (empty) empty.remove();
    calls.appendChild(node);
  }
  node.classList.add("arrived");
}

function live() {
  const state = document.getElementById("live");
  const calls = document.getElementById("calls");
  if (!state || !calls) return;
  let quiet = 0;
  const tick = () => {
    if (document.hidden) return schedule();
    const url = state.dataset.src + "?since=" + encodeURIComponent(state.dataset.since) + "&gen=" + encodeURIComponent(state.dataset.gen);
    fetch(url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((doc) => {
        if (doc.reload) { window.location.reload(); return; }
        state.dataset.since = doc.since;
        state.dataset.gen = doc.gen;
        state.dataset.active = doc.active ? "true" : "false";
        doc.calls.forEach((item) => place(calls, item));
        quiet = doc.calls.length ? 0 : quiet + 1;
        document.body.classList.toggle("is-live", !!doc.active);
      })
      .catch(() => { quiet += 1; })
      .finally(schedule);
  };
  // Once a second while the session is written to; every five seconds once it is quiet.
  const schedule = () => setTimeout(tick, state.dataset.active === "true" && quiet < 300 ? 1000 : 5000);
  document.body.classList.toggle("is-live", state.dataset.active === "true");
  schedule();
}

document.addEventListener("DOMContentLoaded", live);
