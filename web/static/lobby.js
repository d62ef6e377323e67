// The lobby of a scheduled meeting (docs/PROTOCOL.md, "Lobby").
// A point that arrives before the chair starts the meeting (or a guest that the chair has
// not let in yet) receives {"type": "lobby"} instead of "joined": `watchLobby` shows the
// waiting view until "joined" (or a refusal) arrives.  The chair's side receives
// "lobby-state" (who waits): `LobbyPanel` lists them with admit / refuse buttons and a
// start button while the meeting has not started.

import { t, tf } from "./i18n.js";

const $ = (id) => document.getElementById(id);

function startsText(iso) {
  if (!iso) return "";
  const time = new Date(iso).toLocaleString("vi-VN", {
    timeZone: "Asia/Ho_Chi_Minh",
    hour: "2-digit",
    minute: "2-digit",
    day: "2-digit",
    month: "2-digit",
    year: "numeric",
  });
  return tf("lobby.starts", { time });
}

/** Show the waiting view while `signaling` (joining) sits in the lobby. */
export function watchLobby(signaling) {
  const ws = signaling.ws;
  const view = $("lobby");
  if (!ws || !view) return;
  const onMessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "lobby") {
      $("prejoin").hidden = true;
      view.hidden = false;
      $("lobby-text").textContent = t(message.guest ? "lobby.waitingGuest" : "lobby.waiting");
      $("lobby-starts").textContent = startsText(message.starts);
    } else if (message.type === "joined" || message.type === "error") {
      if (!view.hidden && message.type === "joined") $("lobby-text").textContent = t("lobby.admitted");
      view.hidden = true;
      ws.removeEventListener("message", onMessage);
    }
  };
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", () => {
    if (!view.hidden) {
      view.hidden = true;
      $("prejoin").hidden = false;
    }
  });
  $("lobby-leave").onclick = () => {
    signaling.leave();
    location.reload();
  };
}

/** The chair's list of waiting participants (from "lobby-state" messages). */
export class LobbyPanel {
  constructor(send) {
    this.send = send;
    this.panel = $("lobby-panel");
  }

  /** Render a "lobby-state" message. */
  update(state) {
    if (!this.panel) return;
    const list = $("lobby-waiting");
    list.replaceChildren();
    for (const waiter of state.waiting || []) {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = waiter.name + (waiter.guest ? ` (${t("lobby.guest")})` : "");
      item.append(name);
      for (const [action, key] of [["admit", "lobby.admit"], ["refuse", "lobby.refuse"]]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = t(key);
        button.dataset.action = action;
        button.dataset.identity = waiter.identity;
        button.onclick = () => this.send({ type: action, identity: waiter.identity });
        item.append(button);
      }
      list.append(item);
    }
    $("lobby-none").hidden = (state.waiting || []).length > 0;
    const start = $("lobby-start");
    start.hidden = Boolean(state.started);
    $("lobby-not-started").hidden = Boolean(state.started);
    start.onclick = () => this.send({ type: "meeting-start" });
    this.panel.hidden = false;
  }
}
