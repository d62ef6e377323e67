// Chat panel: messages to everyone, with sender name and time.  Text is always
// rendered as text (textContent), never as HTML.

import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const MAX_SHOWN = 200;

function time(ms) {
  return new Date(ms).toLocaleTimeString(document.documentElement.lang === "en" ? "en-GB" : "vi-VN",
    { hour: "2-digit", minute: "2-digit" });
}

/** Append one chat message (as received from the server) to the log. */
export function showChat(message, me) {
  const log = $("chat-log");
  if (log.querySelector(`li[data-id="${Number(message.id)}"]`)) return;
  const item = document.createElement("li");
  item.dataset.id = String(Number(message.id));
  item.dataset.participant = message.participant;
  item.classList.toggle("mine", message.participant === me?.id);
  const head = document.createElement("div");
  head.className = "chat-head";
  const name = document.createElement("span");
  name.className = "chat-name";
  name.textContent = message.name;
  const when = document.createElement("time");
  when.dateTime = new Date(message.at).toISOString();
  when.textContent = time(message.at);
  head.append(name, " ", when);
  const text = document.createElement("p");
  text.className = "chat-text";
  text.textContent = message.text;
  item.append(head, text);
  log.append(item);
  while (log.children.length > MAX_SHOWN) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

/** Wire the chat form to `send` (a function taking a protocol message). */
export function setupChat(send) {
  $("chat-form").onsubmit = (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    send({ type: "chat", text: text.slice(0, 1000) });
    $("chat-input").value = "";
  };
  $("chat-input").placeholder = t("chat.placeholder");
}
