// The sandbox chat page: renders one chat of the fake Telegram and sends what you type and
// click. Every text goes into the page through textContent / DOM nodes, never innerHTML:
// formatting comes from Telegram's entities, so no message can inject markup.
"use strict";

// Commands that need arguments go into the text box instead of being sent at once.
const TAKES_ARGUMENTS = new Set(["credit", "debit", "user", "ban", "unban", "refund", "broadcast"]);

const state = { people: [], person: "alice", lang: "en", seq: 0, poll: null, rows: new Map() };
const $ = (id) => document.getElementById(id);

function identity() {
  return state.people.find((p) => p.key === `${state.person}-${state.lang}`);
}

// ---------------------------------------------------------------- rendering entities

const TAGS = {
  bold: "b", italic: "i", underline: "u", strikethrough: "s", code: "code", pre: "pre",
  blockquote: "blockquote", expandable_blockquote: "blockquote",
};

function safeUrl(url) {
  return typeof url === "string" && /^(https?:|tg:)/i.test(url) ? url : null;
}

function element(entity, text) {
  if (entity.type === "text_link" || entity.type === "url") {
    const href = safeUrl(entity.type === "url" ? text : entity.url);
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      return a;
    }
    return document.createElement("span");
  }
  if (entity.type === "spoiler") {
    const span = document.createElement("span");
    span.className = "spoiler";
    span.addEventListener("click", () => span.classList.add("shown"));
    return span;
  }
  const tag = TAGS[entity.type];
  return document.createElement(tag || "span");
}

// Entities nest (Telegram's offsets and lengths are UTF-16 units, as JS strings are).
function renderRange(parent, text, start, end, entities) {
  let at = start;
  let i = 0;
  while (i < entities.length) {
    const entity = entities[i];
    const stop = entity.offset + entity.length;
    if (entity.offset > at) parent.append(document.createTextNode(text.slice(at, entity.offset)));
    const inner = [];
    let j = i + 1;
    while (j < entities.length && entities[j].offset < stop) {
      inner.push(entities[j]);
      j += 1;
    }
    const node = element(entity, text.slice(entity.offset, stop));
    renderRange(node, text, entity.offset, stop, inner);
    parent.append(node);
    at = Math.max(at, stop);
    i = j;
  }
  if (at < end) parent.append(document.createTextNode(text.slice(at, end)));
}

function renderText(parent, text, entities) {
  const sorted = (entities || [])
    .filter((e) => Number.isInteger(e.offset) && Number.isInteger(e.length) && e.length > 0)
    .sort((a, b) => a.offset - b.offset || b.length - a.length);
  renderRange(parent, text, 0, text.length, sorted);
}

// ---------------------------------------------------------------- messages

function time(date, edited) {
  const d = new Date(date * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return edited ? `edited ${hm}` : hm;
}

function drawMessage(message) {
  const chat = $("chat");
  const old = state.rows.get(message.id);
  if (message.deleted) {
    if (old) old.remove();
    state.rows.delete(message.id);
    return;
  }
  const row = document.createElement("div");
  row.className = message.from_bot ? "row in" : "row out";
  row.dataset.messageId = String(message.id);
  row.dataset.testid = "message";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  renderText(bubble, message.text, message.entities);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = time(message.date, message.edited);
  bubble.append(meta);
  row.append(bubble);
  if (message.keyboard.length) row.append(drawKeyboard(message));
  if (old) {
    old.replaceWith(row);
    bubble.classList.add("fresh");
  } else {
    const empty = chat.querySelector(".empty");
    if (empty) empty.remove();
    chat.append(row);
    if (message.from_bot) bubble.classList.add("fresh");
  }
  state.rows.set(message.id, row);
}

function drawKeyboard(message) {
  const keyboard = document.createElement("div");
  keyboard.className = "keyboard";
  for (const buttons of message.keyboard) {
    const row = document.createElement("div");
    row.className = "kb-row";
    for (const button of buttons) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = button.text;
      b.title = button.text;
      if (button.data !== null && button.data !== undefined) {
        b.addEventListener("click", () => click(message.id, button.data, b));
      } else if (safeUrl(button.url)) {
        b.textContent = `${button.text} ↗`;
        b.addEventListener("click", () => window.open(safeUrl(button.url), "_blank", "noopener"));
      } else {
        b.disabled = true;
      }
      row.append(b);
    }
    keyboard.append(row);
  }
  return keyboard;
}

function scrollDown() {
  const chat = $("chat");
  chat.scrollTop = chat.scrollHeight;
}

// ---------------------------------------------------------------- talking to the sandbox

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

async function click(messageId, data, button) {
  button.disabled = true;
  try {
    const answer = await post("/api/click", { user: identity().key, message_id: messageId, data });
    if (answer.answered && answer.text) (answer.alert ? showAlert : showToast)(answer.text);
  } catch (error) {
    showToast(String(error.message || error));
  } finally {
    button.disabled = false;
  }
}

async function send(text) {
  await post("/api/send", { user: identity().key, text });
}

async function pollLoop(key, signal) {
  let since = 0;
  let first = true;
  while (!signal.aborted) {
    try {
      const url = `/api/updates?user=${encodeURIComponent(key)}&since=${since}&wait=${first ? 0 : 1}`;
      const response = await fetch(url, { signal });
      if (!response.ok) throw new Error(response.statusText);
      const body = await response.json();
      if (signal.aborted) return;
      for (const message of body.messages) drawMessage(message);
      if (body.messages.length) scrollDown();
      since = body.seq;
      first = false;
      state.seq = since;
      $("status").textContent = "bot · sandbox · no real money, no real numbers";
    } catch (error) {
      if (signal.aborted) return;
      $("status").textContent = "sandbox not reachable, retrying…";
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
  }
}

function open() {
  if (state.poll) state.poll.abort();
  state.rows.clear();
  const chat = $("chat");
  chat.replaceChildren();
  const me = identity();
  const empty = document.createElement("div");
  empty.className = "empty";
  empty.textContent = `You are ${me.first_name} (id ${me.user_id}${me.admin ? ", admin" : ""}). Press Menu → /start.`;
  chat.append(empty);
  for (const b of document.querySelectorAll(".lang")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === state.lang));
  }
  localStorage.setItem("sandbox-person", state.person);
  localStorage.setItem("sandbox-lang", state.lang);
  state.poll = new AbortController();
  pollLoop(me.key, state.poll.signal);
}

// ---------------------------------------------------------------- toasts and menus

let toastTimer = null;
function showToast(text) {
  const toast = $("toast");
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { toast.hidden = true; }, 2500);
}

function showAlert(text) {
  $("alert-text").textContent = text;
  $("alert").hidden = false;
}

// The bot's own command menu (setMyCommands), as Telegram's Menu button shows it.
async function toggleCommands() {
  const box = $("commands");
  if (!box.hidden) {
    box.hidden = true;
    return;
  }
  const response = await fetch(`/api/commands?user=${encodeURIComponent(identity().key)}`);
  const list = response.ok ? await response.json() : [];
  box.replaceChildren();
  if (!list.length) {
    const none = document.createElement("div");
    none.className = "hint none";
    none.textContent = "The bot has set no commands yet.";
    box.append(none);
  }
  for (const { command, description } of list) {
    const b = document.createElement("button");
    b.type = "button";
    const c = document.createElement("span");
    c.className = "cmd";
    c.textContent = `/${command}`;
    const h = document.createElement("span");
    h.className = "hint";
    h.textContent = description;
    b.append(c, h);
    b.addEventListener("click", () => {
      box.hidden = true;
      if (TAKES_ARGUMENTS.has(command)) {
        $("input").value = `/${command} `;
        $("input").focus();
      } else {
        send(`/${command}`).catch((e) => showToast(String(e.message || e)));
      }
    });
    box.append(b);
  }
  box.hidden = false;
}

async function main() {
  state.people = await (await fetch("/api/identities")).json();
  const select = $("person");
  const seen = new Set();
  for (const p of state.people) {
    const person = p.key.split("-")[0];
    if (seen.has(person)) continue;
    seen.add(person);
    const option = document.createElement("option");
    option.value = person;
    option.textContent = p.admin ? `${p.first_name} (admin)` : p.first_name;
    select.append(option);
  }
  state.person = localStorage.getItem("sandbox-person") || state.person;
  state.lang = localStorage.getItem("sandbox-lang") || state.lang;
  if (!identity()) { state.person = "alice"; state.lang = "en"; }
  select.value = state.person;
  select.addEventListener("change", () => { state.person = select.value; open(); });
  for (const b of document.querySelectorAll(".lang")) {
    b.addEventListener("click", () => { state.lang = b.dataset.lang; open(); });
  }
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text).catch((e) => showToast(String(e.message || e)));
  });
  $("menu").addEventListener("click", toggleCommands);
  $("alert-ok").addEventListener("click", () => { $("alert").hidden = true; });
  open();
}

main();
