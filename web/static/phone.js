// The room on a phone, upright or turned sideways: the stylesheet lays it out ("the room on
// a phone" in style.css: the large video the screen's width, the others in a strip, large
// buttons at the bottom); this module opens and closes the panel that holds the list of
// points (with the chair's controls and the rarer settings) or the chat over the control
// bar, and counts on its buttons what arrived while it was shut: unread messages, and for
// the chair the raised hands.

import { tf } from "./i18n.js";

const $ = (id) => document.getElementById(id);

/** A phone, upright or sideways: the same query as style.css. */
export const compact = window.matchMedia("(max-width: 40rem), (max-height: 30rem)");

/** Put `count` on `button` (a badge, and the count in its name for screen readers). */
function badge(button, count, key) {
  if (count > 0) {
    button.dataset.count = count > 99 ? "99+" : String(count);
    button.setAttribute("aria-label", tf(key, { count }));
  } else {
    delete button.dataset.count;
    button.removeAttribute("aria-label");
  }
}

export class Panel {
  constructor() {
    this.open = null; // null, "chat" or "more"
    this.unread = 0; // chat messages from others while the chat was not in view
    this.hands = 0; // the chair's queue of raised hands
    $("chat-btn").onclick = () => this.show(this.open === "chat" ? null : "chat");
    $("more-btn").onclick = () => this.show(this.open === "more" ? null : "more");
    $("panel-close").onclick = () => this.show(null);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.open && !event.target.closest?.("dialog")) this.show(null);
    });
  }

  /** Open the chat ("chat"), the list and settings ("more"), or nothing (null). */
  show(which) {
    this.open = which;
    const room = $("room");
    room.classList.toggle("panel-chat", which === "chat");
    room.classList.toggle("panel-more", which === "more");
    for (const [id, name] of [["chat-btn", "chat"], ["more-btn", "more"]]) {
      $(id).setAttribute("aria-expanded", String(which === name));
      $(id).classList.toggle("active", which === name);
    }
    if (which === "chat") {
      this.unread = 0;
      const log = $("chat-log");
      log.scrollTop = log.scrollHeight; // the latest message
    }
    this.render();
  }

  /** A chat message arrived: counted while a phone does not show the chat. */
  chatArrived(mine) {
    if (mine || !compact.matches || this.open === "chat") return;
    this.unread += 1;
    this.render();
  }

  /** The chair's queue of raised hands has `count` entries (0 for a point). */
  setHands(count) {
    if (count === this.hands) return;
    this.hands = count;
    this.render();
  }

  render() {
    badge($("chat-btn"), this.unread, "room.unread");
    badge($("more-btn"), this.open === "more" ? 0 : this.hands, "room.handsWaiting");
  }
}
