// Chair controls (moderate grant): the queue of raised hands with "give the floor",
// per-participant mute / ask to unmute / remove / link profile, mute all and let everyone
// unmute, lock, end the meeting.
// The server enforces all of it; these buttons only ask.

import { t, tf } from "./i18n.js";

const $ = (id) => document.getElementById(id);

function button(text, className, onclick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = text;
  node.onclick = onclick;
  return node;
}

// a point's link profile, as the chair sets it (`set-profile`): its page applies it
const PROFILE_LABELS = { high: "chair.profileHigh", low: "chair.profileLow", audio: "chair.profileAudio" };

function time(ms) {
  return new Date(ms).toLocaleTimeString(document.documentElement.lang === "en" ? "en-GB" : "vi-VN",
    { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export class Chair {
  /** @param {object} state  the page state; @param {(message: object) => void} send */
  constructor(state, send) {
    this.state = state;
    this.send = send;
    this.removing = null;
    $("mute-all-btn").onclick = () => send({ type: "mute-all" });
    $("release-all-btn").onclick = () => send({ type: "release-all" });
    $("take-floor-btn").onclick = () => send({ type: "take-floor" });
    $("lock-btn").onclick = () => send({ type: "lock", locked: !state.room.locked });
    $("record-btn").onclick = () => send({ type: state.room.recording ? "record-stop" : "record-start" });
    $("end-btn").onclick = () => $("end-dialog").showModal();
    $("end-cancel").onclick = () => $("end-dialog").close();
    $("end-confirm").onclick = () => {
      $("end-dialog").close();
      send({ type: "end-meeting" });
    };
    $("remove-cancel").onclick = () => $("remove-dialog").close();
    $("remove-confirm").onclick = () => {
      $("remove-dialog").close();
      const reason = $("remove-reason").value.trim();
      if (this.removing) {
        send({ type: "remove", participant: this.removing, ...(reason ? { reason } : {}) });
      }
      this.removing = null;
    };
  }

  get active() {
    return Boolean(this.state.me?.grants?.moderate);
  }

  /** The chair panel: visibility, lock and floor buttons, the queue of hands in order. */
  render() {
    const state = this.state;
    $("chair-panel").hidden = !this.active;
    if (!this.active) return;
    const room = state.room;
    $("lock-btn").textContent = room.locked ? t("chair.unlock") : t("chair.lock");
    $("lock-btn").classList.toggle("active", Boolean(room.locked));
    $("take-floor-btn").hidden = !room.floor;
    // while the room holds the points (mute all, the floor), newcomers are held too
    $("release-all-btn").hidden = !room.holding;
    $("record-btn").textContent = room.recording ? t("chair.recordStop") : t("chair.recordStart");
    $("record-btn").classList.toggle("active", Boolean(room.recording));
    const byId = Object.fromEntries(room.participants.map((p) => [p.id, p]));
    const hands = (room.hands || []).filter((hand) => byId[hand.participant]);
    $("hands").replaceChildren(...hands.map((hand) => {
      const item = document.createElement("li");
      item.dataset.participant = hand.participant;
      const name = document.createElement("span");
      name.className = "hand-name";
      name.textContent = byId[hand.participant].name;
      const when = document.createElement("time");
      when.textContent = time(hand.at);
      item.append(name, " ", when, " ",
        button(t("chair.giveFloor"), "give-floor primary",
          () => this.send({ type: "give-floor", participant: hand.participant })));
      return item;
    }));
    $("no-hands").hidden = hands.length > 0;
  }

  /** Buttons for one participant of the list (none for the chair side or oneself). */
  actions(participant) {
    if (!this.active || participant.id === this.state.me?.id || participant.moderator) return [];
    const mic = participant.publications.find((p) => p.source === "microphone");
    const nodes = [];
    if (!participant.floor) {
      nodes.push(button(t("chair.giveFloor"), "give-floor",
        () => this.send({ type: "give-floor", participant: participant.id })));
    }
    if (mic && !mic.blocked && !mic.muted) {
      nodes.push(button(t("chair.muteOne"), "mute-one", () => this.send(
        { type: "mute-participant", participant: participant.id, source: "microphone", muted: true })));
    } else if (mic) {
      nodes.push(button(t("chair.askUnmute"), "ask-unmute",
        () => this.send({ type: "ask-unmute", participant: participant.id })));
    }
    nodes.push(this.profileSelect(participant));
    nodes.push(button(t("chair.remove"), "remove danger", () => {
      this.removing = participant.id;
      $("remove-text").textContent = tf("chair.removeConfirm", { name: participant.name });
      $("remove-reason").value = "";
      $("remove-dialog").showModal();
    }));
    const box = document.createElement("span");
    box.className = "actions";
    box.append(...nodes);
    return [box];
  }

  /** A point's link profile (Tốt / Yếu / Chỉ âm thanh), set live with `set-profile`. */
  profileSelect(participant) {
    const select = document.createElement("select");
    select.className = "profile-one";
    select.setAttribute("aria-label", tf("chair.profileOf", { name: participant.name }));
    select.title = t("quality.profile");
    for (const [value, key] of Object.entries(PROFILE_LABELS)) {
      select.append(new Option(t(key), value));
    }
    select.value = participant.profile in PROFILE_LABELS ? participant.profile : "high";
    select.onchange = () => {
      this.send({ type: "set-profile", participant: participant.id, profile: select.value });
      select.blur(); // the list is drawn again with the room state that follows
    };
    return select;
  }
}
