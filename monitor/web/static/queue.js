// Keyboard review of the queue page. Decisions go to the JSON API with the session
// cookie and the page's CSRF token; the server checks each item's version, so a card
// someone else decided meanwhile comes back as a conflict instead of being overwritten.
(function () {
  "use strict";
  const csrf = document.body.dataset.csrf;
  const labels = JSON.parse(document.body.dataset.labels || "[]");
  const cards = Array.from(document.querySelectorAll(".card"));
  const line = document.getElementById("status-line");
  const UNDO_KEY = "monitor-undo-stack";
  let current = 0;

  function say(text) { if (line) line.textContent = text; }

  function focusCard(index) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(index, cards.length - 1));
    cards.forEach((card, i) => card.classList.toggle("current", i === current));
    cards[current].scrollIntoView({ block: "nearest" });
  }

  function cardFor(id) { return document.getElementById("item-" + id); }

  function showItem(item) {
    const card = cardFor(item.id);
    if (!card) return;
    card.dataset.version = String(item.version);
    card.dataset.status = item.status;
    card.classList.remove("status-pending", "status-approved", "status-rejected", "status-relabelled");
    card.classList.add("status-" + item.status);
    const state = card.querySelector(".state");
    if (state) {
      state.textContent = "";
      const badge = document.createElement("span");
      badge.className = "badge status-" + item.status;
      badge.textContent = item.status;  // textContent: never parsed as HTML
      state.appendChild(badge);
      if (item.review_label) state.appendChild(document.createTextNode(" → " + item.review_label));
    }
    const box = card.querySelector("input[type=checkbox]");
    if (box) box.value = item.id + ":" + item.version;
  }

  function undoStack() {
    try { return JSON.parse(sessionStorage.getItem(UNDO_KEY) || "[]"); } catch (e) { return []; }
  }
  function saveUndo(stack) { sessionStorage.setItem(UNDO_KEY, JSON.stringify(stack.slice(-100))); }

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search); }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { status: response.status, data: data };
  }

  async function decideCurrent(action, label) {
    const card = cards[current];
    if (!card) return;
    const id = card.dataset.id;
    const body = { action: action, version: Number(card.dataset.version) };
    if (label) body.label = label;
    say("saving " + action + (label ? " " + label : "") + " for " + id + " …");
    const { status, data } = await post("/api/v1/items/" + id + "/decision", body);
    if (status === 200) {
      showItem(data.item);
      // Remember the version our decision produced: undo must fail (409) if anyone
      // changed the item since, rather than revert their decision.
      const stack = undoStack();
      stack.push({ id: Number(id), version: data.item.version });
      saveUndo(stack);
      say(id + ": " + data.item.status + (data.item.review_label ? " → " + data.item.review_label : ""));
      focusCard(current + 1);
    } else if (status === 409) {
      showItem(data.current);
      say(id + " changed since you loaded it: it is now " + data.current.status + ". Look again.");
    } else {
      say("not saved (" + status + "): " + (data && data.detail ? JSON.stringify(data.detail) : "error"));
    }
  }

  async function undoLast() {
    const stack = undoStack();
    const last = stack.pop();
    if (last === undefined) { say("nothing to undo"); return; }
    const id = last.id;
    const card = cardFor(id);
    const { status, data } = await post("/api/v1/items/" + id + "/undo", { version: last.version });
    if (status === 200) {
      saveUndo(stack);
      showItem(data.item);
      const index = cards.indexOf(card);
      if (index >= 0) focusCard(index);
      say("undone: " + id + " is " + data.item.status + " again");
    } else if (status === 409) {
      saveUndo(stack);
      showItem(data.current);
      say("cannot undo " + id + ": it changed since (now " + data.current.status + ")");
    } else {
      say("undo failed (" + status + ")");
    }
  }

  function toggleSelect() {
    const card = cards[current];
    if (!card) return;
    const box = card.querySelector("input[type=checkbox]");
    box.checked = !box.checked;
    card.classList.toggle("selected", box.checked);
  }

  document.addEventListener("change", (event) => {
    const box = event.target;
    if (box.matches && box.matches(".card input[type=checkbox]")) box.closest(".card").classList.toggle("selected", box.checked);
  });

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const key = event.key;
    if (key === "j") {
      if (current === cards.length - 1) { const older = document.getElementById("older"); if (older) { older.click(); return; } }
      focusCard(current + 1);
    } else if (key === "k") {
      if (current === 0) { const newer = document.getElementById("newer"); if (newer) { newer.click(); return; } }
      focusCard(current - 1);
    } else if (key === "a") {
      decideCurrent("approve");
    } else if (key === "r") {
      decideCurrent("reject");
    } else if (/^[1-9]$/.test(key)) {
      const label = labels[Number(key) - 1];
      if (label) decideCurrent("relabel", label); else say("no class " + key);
    } else if (key === "u") {
      undoLast();
    } else if (key === "x") {
      toggleSelect();
    } else if (key === "o" || key === "Enter") {
      if (cards[current]) window.location = "/items/" + cards[current].dataset.id;
    } else {
      return;
    }
    event.preventDefault();
  });

  focusCard(0);
})();
