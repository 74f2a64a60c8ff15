// The simulator page: chats with the bot, one per phone number, side by side. Everything shown
// comes from the simulator's events (a user's message as posted to the webhook, the bot's
// replies as the notifier sent them, their delivery statuses), so every open page agrees.
"use strict";

const STATUS_RANK = { sending: 0, queued: 0, accepted: 1, sent: 1, delivered: 2, read: 3, failed: 4 };
const TICKS = { sending: "🕓", queued: "🕓", accepted: "✓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };
const E164 = /^\+[1-9]\d{6,14}$/;
const chats = new Map(); // phone -> {root, messages, bubbles: Map(sid -> element), file}
let botNumber = "";

const $ = (selector, root = document) => root.querySelector(selector);

function phoneOf(address) {
  return (address || "").replace(/^whatsapp:/, "");
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// Whether the user is looking: the page is shown and has the focus, as WhatsApp only sends a
// read receipt for a chat that is open on a phone in use.
function looking() {
  return document.visibilityState === "visible" && document.hasFocus();
}

function setStatus(bubble, status) {
  const ticks = $(".ticks", bubble);
  const now = ticks.dataset.status;
  if (now && STATUS_RANK[status] < STATUS_RANK[now]) return; // a late callback never goes back
  ticks.dataset.status = status;
  ticks.textContent = TICKS[status] || "";
  ticks.title = status;
}

function mediaHtml(media) {
  return (media || []).map(({ url, content_type: type }) => {
    const src = escapeHtml(url);
    if (type.startsWith("image/")) return `<a href="${src}" target="_blank" rel="noopener"><img class="media" src="${src}" alt="image"></a>`;
    if (type.startsWith("audio/")) return `<audio class="media" controls src="${src}"></audio>`;
    return `<a href="${src}" target="_blank" rel="noopener">📄 attachment</a>`;
  }).join("");
}

// Adds the message, or updates it when it is already shown (events and the history overlap).
function upsert(chat, { sid, who, body, media, at, status }) {
  let bubble = chat.bubbles.get(sid);
  if (!bubble) {
    bubble = document.createElement("div");
    bubble.className = `bubble ${who}`;
    bubble.dataset.sid = sid;
    bubble.dataset.at = at;
    bubble.innerHTML = `${mediaHtml(media)}<div class="text">${formatWhatsApp(body || "")}</div>`
      + `<div class="meta"><span class="time">${clock(at)}</span><span class="ticks"></span></div>`;
    if (!body) $(".text", bubble).remove();
    const later = [...chat.messages.children].find((b) => Number(b.dataset.at) > at);
    const stick = chat.messages.scrollHeight - chat.messages.scrollTop - chat.messages.clientHeight < 80;
    chat.messages.insertBefore(bubble, later || null);
    chat.bubbles.set(sid, bubble);
    if (stick || who === "mine") chat.messages.scrollTop = chat.messages.scrollHeight;
  }
  if (status) setStatus(bubble, status);
  return bubble;
}

function show(event) {
  const m = event.message;
  if (event.type === "inbound") {
    const chat = chats.get(phoneOf(m.from));
    if (!chat) return;
    upsert(chat, { sid: m.sid, who: "mine", body: m.body, media: m.media, at: m.at, status: m.status });
    if (m.reply) upsert(chat, { sid: `${m.sid}-reply`, who: "bot", body: m.reply, at: m.at + 0.001, status: "delivered" });
  } else if (event.type === "outbound") {
    const chat = chats.get(phoneOf(m.to));
    if (!chat) return;
    upsert(chat, { sid: m.sid, who: "bot", body: m.body, media: (m.media_urls || []).map((url) => ({ url, content_type: "" })), at: m.at, status: m.status });
    readIfLooking(chat);
  } else if (event.type === "status") {
    const chat = chats.get(phoneOf(event.to));
    const bubble = chat && chat.bubbles.get(event.sid);
    if (!bubble) return;
    setStatus(bubble, event.status);
    if (event.status === "delivered") readIfLooking(chat);
  }
}

// The user reads what was delivered to an open chat while looking at it: the simulator then
// posts `read` status callbacks. One request at a time per chat; one more if asked meanwhile.
function readIfLooking(chat) {
  if (!looking() || !$('.bubble.bot .ticks[data-status="delivered"]', chat.root)) return;
  if (chat.reading) { chat.readAgain = true; return; }
  chat.reading = true;
  const form = new FormData();
  form.set("phone", chat.phone);
  fetch("/_sim/read", { method: "POST", body: form }).finally(() => {
    chat.reading = false;
    if (chat.readAgain) { chat.readAgain = false; readIfLooking(chat); }
  });
}

async function loadHistory(chat) {
  const answer = await fetch(`/_sim/chat?phone=${encodeURIComponent(chat.phone)}`);
  if (answer.ok) (await answer.json()).events.forEach(show);
  readIfLooking(chat);
}

function notice(chat, text) {
  const line = document.createElement("div");
  line.className = "notice";
  line.textContent = text;
  chat.messages.appendChild(line);
  chat.messages.scrollTop = chat.messages.scrollHeight;
}

async function send(chat, body, file) {
  const form = new FormData();
  form.set("phone", chat.phone);
  form.set("body", body);
  if (file) form.set("file", file, file.name);
  try {
    const answer = await fetch("/_sim/send", { method: "POST", body: form });
    const result = answer.ok ? await answer.json() : null;
    if (!answer.ok) notice(chat, `not sent: ${await answer.text()}`);
    else if (result.status === "failed") notice(chat, `the webhook answered ${result.answer ?? "nothing"}: is make run running?`);
  } catch (error) {
    notice(chat, `the simulator is not answering (${error.message})`);
  }
}

function attach(chat, file) {
  chat.file = file;
  const box = $(".attachment", chat.root);
  box.hidden = !file;
  $(".attachment-name", box).textContent = file ? `📎 ${file.name} (${Math.ceil(file.size / 1024)} KB)` : "";
}

// A voice note: record from the microphone, send on the second press (as WhatsApp's ogg/opus
// where the browser records it, webm otherwise).
async function toggleRecording(chat, button) {
  if (chat.recorder) { chat.recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    notice(chat, `no microphone (${error.message}): attach an audio file instead`);
    return;
  }
  const type = ["audio/ogg;codecs=opus", "audio/webm;codecs=opus"].find((t) => MediaRecorder.isTypeSupported(t)) || "";
  const recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const parts = [];
  recorder.ondataavailable = (e) => parts.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    chat.recorder = null;
    button.classList.remove("recording");
    const mime = (recorder.mimeType || "audio/ogg").split(";")[0];
    const name = `voice-note.${mime.includes("webm") ? "webm" : "ogg"}`;
    send(chat, "", new File(parts, name, { type: mime }));
  };
  chat.recorder = recorder;
  button.classList.add("recording");
  recorder.start();
}

function openChat(phone) {
  if (chats.has(phone)) {
    $(".entry", chats.get(phone).root).focus();
    return;
  }
  const root = $("#chat-template").content.firstElementChild.cloneNode(true);
  const chat = { phone, root, messages: $(".messages", root), bubbles: new Map(), file: null };
  root.dataset.phone = phone;
  $(".sub", root).textContent = `${botNumber.replace(/^whatsapp:/, "")} · you are ${phone}`;
  $(".close", root).addEventListener("click", () => {
    chats.delete(phone);
    root.remove();
    saveHash();
  });
  $("input[type=file]", root).addEventListener("change", (e) => attach(chat, e.target.files[0] || null));
  $(".attachment-drop", root).addEventListener("click", () => attach(chat, null));
  $(".record", root).addEventListener("click", (e) => toggleRecording(chat, e.currentTarget));
  $(".composer", root).addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $(".entry", root);
    const body = input.value;
    if (!body.trim() && !chat.file) return;
    send(chat, body, chat.file);
    input.value = "";
    attach(chat, null);
    $("input[type=file]", root).value = "";
  });
  chats.set(phone, chat);
  $("#chats").appendChild(root);
  saveHash();
  loadHistory(chat);
}

function saveHash() {
  history.replaceState(null, "", `#${[...chats.keys()].join(",")}`);
}

function connect() {
  const status = $("#connection");
  const source = new EventSource("/_sim/events");
  source.onopen = () => {
    status.dataset.state = "live";
    status.textContent = "live";
    chats.forEach(loadHistory); // whatever happened while the stream was down
  };
  source.onerror = () => {
    status.dataset.state = "down";
    status.textContent = "reconnecting…";
  };
  source.onmessage = (e) => show(JSON.parse(e.data));
}

async function start() {
  const config = await (await fetch("/_sim/config")).json();
  botNumber = config.bot_number;
  const list = $("#phones");
  config.phones.forEach((phone) => list.appendChild(new Option(phone, phone)));
  $("#open-chat").addEventListener("submit", (e) => {
    e.preventDefault();
    const phone = $("#phone").value.trim();
    if (E164.test(phone)) openChat(phone);
  });
  const asked = decodeURIComponent(location.hash.slice(1)).split(",").map((p) => p.trim()).filter((p) => E164.test(p));
  const first = asked.length ? asked : config.phones.slice(0, 1);
  $("#phone").value = config.phones[0] || "";
  connect();
  first.forEach(openChat);
  const readAll = () => chats.forEach(readIfLooking);
  document.addEventListener("visibilitychange", readAll);
  window.addEventListener("focus", readAll);
}

start();
