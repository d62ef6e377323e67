// The meeting page: pre-join device check, then the room (docs/PROTOCOL.md, version 1).
//
// Two peer connections (the LiveKit model): `publisher` carries our microphone, camera
// and screen share (we offer), `subscriber` carries what we receive (the server offers,
// its `tracks` map labels each mid with a publication id).  The page joins with
// `autoSubscribe: false` and `audioSlots: true`: the meeting's microphones arrive in
// eight fixed audio tracks whoever speaks (so a province's hundred microphones cost no
// renegotiation); it subscribes only to the videos of the visible tiles (in the speaker layout the large tile and the chair only;
// in a large meeting the chair sees a paged mosaic of the points, one page subscribed).
// The server enforces the chair's decisions; this page only asks and shows.
// The page state is exposed as `window.conference` for the end-to-end tests.

import { Signaling } from "./signaling.js";
import { has, t, tf } from "./i18n.js";
import { Prejoin } from "./prejoin.js";
import { setupChat, showChat } from "./chat.js";
import { Chair } from "./chair.js";
import { LobbyPanel, watchLobby } from "./lobby.js";
import { Panel, compact } from "./phone.js";
import { QualityMonitor, RED_SUPPORTED, SIMULCAST, applyProfile, preferRed, qualityBadge } from "./quality.js";

const $ = (id) => document.getElementById(id);
const meeting = $("prejoin").dataset.meeting;

// leave reasons after which the page does not rejoin by itself
const FINAL_REASONS = new Set(["removed", "meeting-ended", "replaced", "room-closed", "deleted"]);
// join refusals that another attempt will not change
const FINAL_ERRORS = new Set(["revoked", "meeting-ended", "room-locked", "wrong-meeting",
  "unauthorized", "expired", "malformed", "bad-signature", "forbidden", "room-full",
  "refused", "not-invited", "meeting-cancelled", "lobby-timeout", "unknown-meeting"]);

const state = {
  session: null, // {token, name, identity, role} from /m/{meeting}/session
  stream: null, // local camera + microphone
  screen: null, // local screen share
  signaling: null,
  publisher: null,
  subscriber: null,
  transceivers: {}, // publisher: source -> transceiver
  me: null, // our participant description from `joined`
  room: { participants: [] },
  speaker: null,
  midToPublication: {}, // subscriber mid -> publication id
  subscribed: new Set(), // publication ids we asked for
  negotiations: [], // subscriber offers handled: [{tracks, at}] (for tests and debugging)
  micMuted: false,
  cameraOff: false,
  handRaised: false,
  invited: false, // the chair asked us to unmute
  profile: "high",
  wantedLayers: {}, // dynacast: rid -> whether the server wants that layer of our camera
  pausedVideos: new Set(), // publication ids the server paused for our link
  audioSlots: {}, // audio slot number -> the participant it carries (`audio-slot`)
  viewKey: null, // the last "view" sent (how large each video is shown)
  tilePublication: {}, // tile key -> the publication it shows
  layout: "auto",
  mode: null, // the layout in use: grid, speaker or mosaic (the chair's, in a large meeting)
  page: 0, // the page of the mosaic (or of a long grid) shown, from 0
  pages: 1,
  rotate: false, // the chair's mosaic turns its pages by itself
  rotationMs: 10_000, // every 10 s (tests shorten it)
  quality: {},
  plan: null, // what the tiles show (for tests)
  left: false,
  reconnecting: false,
  reconnects: 0,
  resume: null, // the secret `joined` gave: a new socket may take this session over
  resumes: 0, // sessions taken over by a new socket (no leave, no join)
  iceRestarts: [], // ICE restarts: [{reason, at, result, ms}] (for tests and debugging)
  chatCount: 0,
};
window.conference = state;

const prejoinScreen = new Prejoin(state);
const send = (message) => state.signaling?.send(message);
const chair = new Chair(state, send);
const lobbyPanel = new LobbyPanel(send);
const panel = new Panel(); // the list and the chat on a phone
let monitor = null;

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

function message(prefix, code, fallback) {
  return has(`${prefix}.${code}`) ? t(`${prefix}.${code}`) : fallback;
}

// -- pre-join ------------------------------------------------------------------

async function fetchSession() {
  const response = await fetch(`/m/${encodeURIComponent(meeting)}/session`, {
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw Object.assign(new Error(body.message || response.statusText),
      { code: body.error || "unauthorized", status: response.status });
  }
  return response.json();
}

async function prejoin() {
  try {
    state.session = await fetchSession();
  } catch (error) {
    $("prejoin").hidden = true;
    notice(error.status === 403 ? t("error.wrongmeeting") : t("error.badlink"));
    return;
  }
  $("name").value = state.session.name;
  $("name").readOnly = true; // the display name comes from the invitation
  // the point's configured bandwidth (the server's database) is the default profile
  const profile = ["high", "low", "audio"].includes(state.session.profile) ? state.session.profile : "high";
  $("prejoin-profile").value = profile;
  $("profile-select").value = profile;
  $("prejoin-profile").onchange = () => ($("profile-select").value = $("prejoin-profile").value);
  await prejoinScreen.start(join);
}

// -- joining and negotiation ---------------------------------------------------

/** Wait until `pc` has gathered its ICE candidates (or `ms` passed: the rest trickle). */
function gathered(pc, ms = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

function peerConnection(name, iceServers) {
  const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
  // candidates found after the SDP was sent are trickled
  pc.onicecandidate = (event) => {
    if (event.candidate && pc.sdpSent) {
      send({ type: "candidate", pc: name, candidate: event.candidate.toJSON() });
    }
  };
  // a media path that fails, or stays silent for a moment, is a network change (Wi-Fi
  // to 4G, a handover): restart ICE on this session; rejoin only if that fails
  let silent = null;
  pc.oniceconnectionstatechange = () => {
    clearTimeout(silent);
    if (pc.replaced || state.left) return;
    if (pc.iceConnectionState === "disconnected") {
      silent = setTimeout(() => restartIce(`${name}-disconnected`), ICE_SILENT_MS);
    } else if (pc.iceConnectionState === "failed") {
      restartIce(`${name}-failed`);
    }
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed" && !state.left && !pc.replaced) {
      console.warn(`${name} connection failed: restarting ICE`);
      restartIce(`${name}-failed`);
    }
  };
  return pc;
}

async function join() {
  $("join").disabled = true;
  $("join").textContent = t("prejoin.joining");
  prejoinScreen.close();
  state.micMuted = $("join-muted").checked;
  state.cameraOff = $("join-camera-off").checked;
  state.profile = $("prejoin-profile").value;
  $("profile-select").value = state.profile;
  state.stream?.getAudioTracks().forEach((track) => (track.enabled = !state.micMuted));
  state.stream?.getVideoTracks().forEach((track) => (track.enabled = !state.cameraOff));
  try {
    await connect();
  } catch (error) {
    $("join").textContent = t("prejoin.join");
    $("join").disabled = false;
    notice(message("leave", error.code, `${t("room.error")}: ${error.message}`));
    return;
  }
  monitor = new QualityMonitor(state);
  state.onQuality = renderParticipants;
}

/** Join the room over a new WebSocket and publish; used for the first join and rejoins.
 *  With `resume` (our socket dropped) the server may hand this session back: then the
 *  peer connections, publications and subscriptions stay (returns true; the caller
 *  restarts ICE). */
async function connect(resume = false) {
  const signaling = new Signaling(meeting, state.session.token);
  // red: this browser receives RED audio; resume: keep the session if the socket drops
  // (docs/PROTOCOL.md)
  const joining = signaling.join({
    autoSubscribe: false,
    audioSlots: true, // every microphone in eight fixed tracks: see render()
    red: RED_SUPPORTED,
    resume: (resume && state.resume) || true,
  });
  watchLobby(signaling); // a scheduled meeting may keep us in its lobby first (lobby.js)
  const joined = await joining;
  state.signaling = signaling;
  state.resume = joined.resume ?? null;
  state.me = joined.participant;
  state.room = joined.room;
  state.speaker = joined.room.speaker ?? null;
  state.audioSlots = { ...(joined.audioSlots || {}) }; // slot -> participant
  state.leftReason = null;
  state.leftMessage = null;
  if (joined.resumed) {
    // the same session on a new socket: nobody saw us leave
    state.resumes += 1;
    // fresh TURN credentials: the ICE restart that follows allocates again with them
    state.iceServers = joined.iceServers || [];
    for (const pc of [state.publisher, state.subscriber]) {
      if (pc) pc.setConfiguration({ ...pc.getConfiguration(), iceServers: state.iceServers });
    }
    listen(signaling);
    render();
    return true;
  }
  closePeers(); // a new session: new connections (a rejoin)
  state.iceServers = joined.iceServers || [];
  state.midToPublication = {};
  state.subscribed = new Set();
  state.pausedVideos = new Set();
  state.wantedLayers = {};
  state.viewKey = null;
  for (const item of joined.chat || []) showChat(item, state.me);
  listen(signaling);
  $("prejoin").hidden = true;
  $("room").hidden = false;
  document.body.classList.add("in-room"); // a phone gives the room the whole screen
  send({ type: "profile", profile: state.profile }); // the ceiling of what we receive, also on a rejoin
  render();
  if (state.me.grants?.publish !== false && (state.stream || state.screen)) await publish();
  if (state.handRaised) send({ type: "raise-hand" });
  return false;
}

/** Hand `signaling`'s messages to the handlers while it is the page's socket. */
function listen(signaling) {
  for (const type of Object.keys(handlers)) {
    // a replaced socket's late events are ignored
    signaling.addEventListener(type, (event) => {
      if (state.signaling === signaling) handlers[type](event.detail);
    });
  }
}

/** Offer our microphone, camera (and screen share) on a new publisher connection. */
async function publish() {
  const pc = peerConnection("publisher", state.iceServers);
  state.publisher = pc;
  state.transceivers = {};
  for (const track of state.stream?.getTracks() ?? []) {
    const source = track.kind === "audio" ? "microphone" : "camera";
    const init = { direction: "sendonly", streams: [state.stream] };
    // the camera in three simulcast layers: the server forwards each viewer the one its link carries
    if (source === "camera") init.sendEncodings = SIMULCAST.map((layer) => ({ ...layer }));
    state.transceivers[source] = pc.addTransceiver(track, init);
    if (source === "microphone") preferRed(state.transceivers[source]); // redundant audio
  }
  const screen = state.screen?.getVideoTracks()[0];
  if (screen) {
    screen.contentHint = "detail"; // a document: keep the resolution, lower the frame rate
    state.transceivers.screen = pc.addTransceiver(screen, { direction: "sendonly" });
  }
  await negotiatePublisher();
  if (state.micMuted) send({ type: "mute", source: "microphone", muted: true });
  if (state.cameraOff || state.profile === "audio") send({ type: "mute", source: "camera", muted: true });
  await applyProfile(state.transceivers.camera?.sender, state.profile, state.wantedLayers);
  renderControls();
}

let publisherQueue = Promise.resolve();

/** (Re)negotiate the publisher connection; offers are made one at a time.
 *  `options`: `{iceRestart: true}` offers new ICE credentials (see restartIce). */
function negotiatePublisher(options = {}) {
  const run = async () => {
    const pc = state.publisher;
    if (!pc || pc.signalingState === "closed") return;
    await pc.setLocalDescription(await pc.createOffer(options));
    await gathered(pc);
    const tracks = {};
    for (const [source, transceiver] of Object.entries(state.transceivers)) {
      if (transceiver.mid !== null && transceiver.direction !== "inactive") tracks[transceiver.mid] = source;
    }
    pc.sdpSent = true;
    const answer = await state.signaling.request(
      { type: "offer", pc: "publisher", sdp: pc.localDescription.sdp, tracks }, "answer");
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  };
  publisherQueue = publisherQueue.then(run, run);
  return publisherQueue;
}

let subscriberQueue = Promise.resolve();

/** Answer a server offer on the subscriber connection (offers are handled in order). */
async function answerSubscriber(offer) {
  if (!state.subscriber) {
    state.subscriber = peerConnection("subscriber", state.iceServers);
    state.subscriber.ontrack = () => render();
  }
  const pc = state.subscriber;
  // the offer names every mid that carries something now (a retired one loses its label)
  state.midToPublication = { ...(offer.tracks || {}) };
  state.negotiations.push({ tracks: offer.tracks, at: performance.now() });
  await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  pc.sdpSent = true;
  send({ type: "answer", pc: "subscriber", sdp: pc.localDescription.sdp });
  state.negotiations.at(-1).answered = performance.now();
  render();
}

// -- reconnect -----------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function closePeers() {
  for (const pc of [state.publisher, state.subscriber]) {
    if (pc) {
      pc.replaced = true;
      pc.close();
    }
  }
  state.publisher = null;
  state.subscriber = null;
  state.transceivers = {};
  subscriberQueue = Promise.resolve();
  publisherQueue = Promise.resolve();
}

/** The connection dropped: say so, then join again.  The first tries resume the session
 *  (the server keeps it `resume_timeout`, 15 s): same participant, same connections, only
 *  ICE restarts.  If the server no longer has it, the join is a new session that replaces
 *  the old one and publishes again.  `fresh`: a rejoin (an ICE restart failed). */
async function reconnect({ fresh = false } = {}) {
  if (state.reconnecting || state.left) return;
  state.reconnecting = true;
  state.reconnects += 1;
  $("reconnecting").hidden = false;
  $("room").classList.add("offline");
  if (fresh) {
    const old = state.signaling;
    state.signaling = null; // its close is ours: no second reconnect
    old?.ws?.close();
    closePeers();
  }
  const since = performance.now();
  let delay = fresh ? 500 : 200;
  let resumed = false;
  while (!state.left) {
    await sleep(delay);
    try {
      state.session = await fetchSession(); // the cookie may have been renewed
      resumed = await connect(!fresh);
      break;
    } catch (error) {
      console.warn("rejoin failed", error);
      if (FINAL_ERRORS.has(error.code)) {
        state.reconnecting = false;
        $("reconnecting").hidden = true;
        end(message("leave", error.code, t("leave.disconnected")));
        return;
      }
      state.signaling?.ws?.close();
      // often while the session can still be resumed, then less often
      delay = Math.min(delay * 2, performance.now() - since < RESUME_MS ? 2000 : 8000);
    }
  }
  state.reconnecting = false;
  $("reconnecting").hidden = true;
  $("room").classList.remove("offline");
  notice(t("room.reconnected"));
  setTimeout(() => {
    if ($("notice").textContent === t("room.reconnected")) notice("");
  }, 3000);
  // the network under our connections changed too: a new path under the same sessions
  if (resumed && !state.left) restartIce("resumed");
}

/** Our socket no longer answers (its network is gone: closing it would wait for an
 *  answer that never comes): leave it and join again on a new one, resuming. */
function signalingLost() {
  const old = state.signaling;
  state.signaling = null; // its late events are ignored
  old?.ws?.close();
  reconnect();
}

// -- ICE restart ---------------------------------------------------------------

// an ICE connection "disconnected" this long (no answer to its checks) is restarted
const ICE_SILENT_MS = 2000;
// a restart that has no connection again by then gives way to a rejoin
const ICE_RESTART_MS = 12000;
// how long the server keeps a dropped session for a resume (its resume_timeout)
const RESUME_MS = 15000;
let iceRestarting = null;

const ufragOf = (sdp) => /a=ice-ufrag:(\S+)/.exec(sdp ?? "")?.[1] ?? null;

/** Resolve when `ready()` holds (checked every 100 ms); reject after `ms`. */
function until(ready, ms) {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const check = () => {
      if (ready()) resolve();
      else if (performance.now() - started > ms) reject(new Error("timeout"));
      else setTimeout(check, 100);
    };
    check();
  });
}

const iceUp = (pc) => ["connected", "completed"].includes(pc.iceConnectionState);

/** Our network changed (or a connection lost its path): restart ICE on both connections
 *  of this session (new ICE credentials and candidates under the same DTLS sessions: no
 *  leave, no join, no track renegotiated).  The publisher connection offers again with
 *  `iceRestart`; the server offers the subscriber connection again (`restart-ice`).  If
 *  the signaling socket is dead too, the session is resumed first (reconnect), which
 *  restarts ICE; if the connections do not come back within ICE_RESTART_MS, rejoin. */
async function restartIce(reason) {
  if (iceRestarting || state.left || state.reconnecting) return;
  const publisher = state.publisher?.signalingState !== "closed" ? state.publisher : null;
  const subscriber = state.subscriber?.signalingState !== "closed" ? state.subscriber : null;
  if (!publisher && !subscriber) return;
  const attempt = { reason, at: performance.now(), result: null, ms: null };
  iceRestarting = attempt;
  state.iceRestarts.push(attempt);
  try {
    notice(t("room.networkChanged"));
    try {
      // a network change often takes the WebSocket with it: check it answers
      await state.signaling.request({ type: "ping", id: "ice-restart" }, "pong", 3000);
    } catch {
      attempt.result = "signaling-lost";
      iceRestarting = null;
      signalingLost(); // resume, then restart
      return;
    }
    const jobs = [];
    if (publisher) {
      jobs.push(negotiatePublisher({ iceRestart: true }).then(() => until(() => iceUp(publisher), ICE_RESTART_MS)));
    }
    if (subscriber) {
      const before = ufragOf(subscriber.remoteDescription?.sdp);
      send({ type: "restart-ice", pc: "subscriber" });
      jobs.push(until(() => ufragOf(subscriber.remoteDescription?.sdp) !== before
        && subscriber.signalingState === "stable" && iceUp(subscriber), ICE_RESTART_MS));
    }
    await Promise.all(jobs);
    attempt.result = "ok";
    attempt.ms = Math.round(performance.now() - attempt.at);
    if ($("notice").textContent === t("room.networkChanged")) notice("");
  } catch (error) {
    if (state.left || attempt.result) return;
    attempt.result = "failed";
    console.warn("ICE restart failed: rejoining", error);
    iceRestarting = null;
    if ($("notice").textContent === t("room.networkChanged")) notice("");
    reconnect({ fresh: true });
  } finally {
    if (iceRestarting === attempt) iceRestarting = null;
  }
}

// the network as the browser sees it: its kind ("wifi", "cellular"; Android and ChromeOS)
let networkType = navigator.connection?.type ?? null;
let networkCheck = null;

/** The browser says the network changed: back online, or `navigator.connection` changed
 *  (another kind of link, or only its estimates: rtt, downlink).  Back online, another
 *  kind of link, or a connection no longer connected: restart ICE.  Otherwise check that
 *  the socket still answers (a changed address kills it and the media paths a moment
 *  later): if not, resume on a new socket, which restarts ICE. */
async function networkChanged(reason) {
  if (state.left || state.reconnecting || iceRestarting || networkCheck || !state.signaling) return;
  const type = navigator.connection?.type ?? null;
  const switched = reason === "online" || type !== networkType;
  networkType = type;
  const pcs = [state.publisher, state.subscriber].filter((pc) => pc && pc.signalingState !== "closed");
  if (switched || pcs.some((pc) => !iceUp(pc))) {
    restartIce(reason);
    return;
  }
  networkCheck = state.signaling.request({ type: "ping", id: "network" }, "pong", 3000);
  try {
    await networkCheck;
  } catch {
    if (!state.left && !state.reconnecting) {
      state.iceRestarts.push({ reason, at: performance.now(), result: "signaling-lost", ms: null });
      signalingLost();
    }
  } finally {
    networkCheck = null;
  }
}

window.addEventListener("online", () => networkChanged("online"));
navigator.connection?.addEventListener?.("change", () => networkChanged("network-change"));

/** The session is over for good: leave the room view and say why. */
function end(text) {
  hangUp();
  showLeft(text, false);
}

/** The page after the room: why, and "join again" when that makes sense. */
function showLeft(text, rejoin) {
  notice("");
  $("left-text").textContent = text;
  $("rejoin-btn").hidden = !rejoin;
  $("left").hidden = false;
}

// -- server messages -----------------------------------------------------------

function myMicrophone() {
  const me = state.room.participants.find((p) => p.id === state.me?.id);
  return me?.publications.find((p) => p.source === "microphone");
}

const handlers = {
  room(update) {
    state.room = update;
    const me = update.participants.find((p) => p.id === state.me?.id);
    if (me) state.handRaised = Boolean(me.hand); // the server's queue is the truth
    state.speaker = update.speaker ?? null;
    render();
  },
  offer(offer) {
    if (offer.pc !== "subscriber") return;
    subscriberQueue = subscriberQueue.then(() => answerSubscriber(offer)).catch((error) => {
      console.error("subscriber negotiation failed", error);
    });
  },
  speaker(update) {
    state.speaker = update.participant ?? null;
    render();
  },
  recording(update) {
    state.room.recording = Boolean(update.recording);
    if (update.continued && state.me?.grants?.moderate) {
      // the node that recorded stopped; another node of the meeting records on
      notice(t("recording.continued"));
    }
    render();
  },
  "recording-failed"(problem) {
    // to the chair's side: the recording stopped by itself (a full disk); the meeting goes on
    notice(message("recording.failed", problem.reason, t("recording.failed.disk-full")));
  },
  floor(update) {
    state.room.floor = update.participant;
    if (update.participant === state.me?.id) {
      state.handRaised = false;
      setMicMuted(false, true); // the floor is the point's consent to speak
      notice(t("room.floorYou"));
    }
    render();
  },
  "muted-by-moderator"(update) {
    if (update.source !== "microphone") return;
    if (update.muted) {
      state.invited = false;
      setMicMuted(true);
      notice(t("room.mutedByModerator"));
    } else if ($("notice").textContent === t("room.mutedByModerator")) {
      notice("");
    }
  },
  "unmute-request"() {
    state.invited = true;
    if (!$("unmute-dialog").open) $("unmute-dialog").showModal();
  },
  "unmute-declined"(update) {
    const who = state.room.participants.find((p) => p.id === update.participant);
    notice(tf("chair.unmuteDeclined", { name: who?.name ?? "" }));
  },
  layers(update) {
    // dynacast: the server says which of our camera's layers somebody receives
    const wanted = {};
    (update.rids || []).forEach((rid, index) => (wanted[rid] = Boolean(update.active?.[index])));
    state.wantedLayers = wanted;
    applyProfile(state.transceivers?.camera?.sender, state.profile, wanted).catch(() => {});
  },
  "audio-slot"(update) {
    // whose microphone an audio slot carries from now on
    state.audioSlots[update.slot] = update.participant;
    const node = $("audios").querySelector(`audio[data-slot="audio-slot:${Number(update.slot)}"]`);
    if (node) node.dataset.participant = update.participant ?? "";
  },
  "video-paused"(update) {
    // our link cannot carry this video now: the server paused it (audio goes on)
    if (update.paused) state.pausedVideos.add(update.publication);
    else state.pausedVideos.delete(update.publication);
    render();
  },
  profile(update) {
    // the chair changed our link profile
    if (update.profile && update.profile !== state.profile) {
      setProfile(update.profile, false).catch(() => {});
      notice(tf("quality.profileByChair", { profile: t(`quality.${update.profile}`) }));
    }
  },
  "lobby-state"(update) {
    lobbyPanel.update(update); // the chair's list of waiting points and guests
  },
  chat(item) {
    state.chatCount += 1;
    showChat(item, state.me);
    panel.chatArrived(item.participant === state.me?.id);
  },
  leave(update) {
    state.leftReason = update.reason;
    state.leftMessage = update.message ?? null;
  },
  error(problem) {
    console.warn("server error", problem);
    if (has(`error.${problem.code}`)) notice(t(`error.${problem.code}`));
  },
  close() {
    if (state.left) return;
    const reason = state.leftReason;
    if (FINAL_REASONS.has(reason)) {
      let text = message("leave", reason, t("leave.disconnected"));
      if (state.leftMessage) text += ` ${tf("room.removedWhy", { reason: state.leftMessage })}`;
      end(text);
      return;
    }
    reconnect();
  },
};

// -- controls ------------------------------------------------------------------

/** Mute or unmute our microphone.  A point the chair holds unmutes only when asked
 *  (`unmute-request`) or given the floor (`force`): the server refuses otherwise. */
function setMicMuted(muted, force = false) {
  const held = myMicrophone()?.blocked;
  if (!muted && held && !force && !state.invited && state.room.floor !== state.me?.id) {
    notice(t("room.held"));
    return false;
  }
  state.micMuted = muted;
  if (!muted) state.invited = false;
  state.stream?.getAudioTracks().forEach((track) => (track.enabled = !muted));
  send({ type: "mute", source: "microphone", muted });
  renderControls();
  return true;
}

function setCameraOff(off) {
  state.cameraOff = off;
  state.stream?.getVideoTracks().forEach((track) => (track.enabled = !off));
  send({ type: "mute", source: "camera", muted: off || state.profile === "audio" });
  renderControls();
}

function setHand(raised) {
  state.handRaised = raised;
  send({ type: raised ? "raise-hand" : "lower-hand" });
  renderControls();
}

async function setProfile(profile, tell = true) {
  state.profile = profile;
  $("profile-select").value = profile;
  await applyProfile(state.transceivers.camera?.sender, profile, state.wantedLayers);
  send({ type: "mute", source: "camera", muted: state.cameraOff || profile === "audio" });
  if (tell) send({ type: "profile", profile }); // the server's ceiling for what we receive
  render();
}

/** Share the screen: a second video publication, source "screen". */
async function startScreen() {
  let stream;
  try {
    stream = await (state.screenCapture?.() ?? navigator.mediaDevices.getDisplayMedia({ video: true, audio: false }));
  } catch (error) {
    console.warn("getDisplayMedia failed", error);
    notice(t("room.shareFailed"));
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  if ("contentHint" in track) track.contentHint = "detail";
  track.addEventListener("ended", () => stopScreen());
  state.screen = stream;
  if (!state.publisher) {
    await publish();
  } else {
    const existing = state.transceivers.screen;
    if (existing) {
      await existing.sender.replaceTrack(track);
      existing.direction = "sendonly";
    } else {
      state.transceivers.screen = state.publisher.addTransceiver(track, { direction: "sendonly" });
    }
    await negotiatePublisher();
  }
  renderControls();
}

async function stopScreen() {
  if (!state.screen) return;
  state.screen.getTracks().forEach((track) => track.stop());
  state.screen = null;
  const transceiver = state.transceivers.screen;
  if (transceiver && state.publisher) {
    send({ type: "unpublish", source: "screen" });
    transceiver.direction = "inactive";
    await transceiver.sender.replaceTrack(null);
    await negotiatePublisher();
  }
  renderControls();
}

function hangUp() {
  state.left = true;
  monitor?.stop();
  closePeers();
  state.stream?.getTracks().forEach((track) => track.stop());
  state.screen?.getTracks().forEach((track) => track.stop());
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("room").hidden = true;
  document.body.classList.remove("in-room");
}

$("notice").onclick = () => notice(""); // read: put away
$("mute-btn").onclick = () => setMicMuted(!state.micMuted);
$("camera-btn").onclick = () => setCameraOff(!state.cameraOff);
$("hand-btn").onclick = () => setHand(!state.handRaised);
$("screen-btn").onclick = () => (state.screen ? stopScreen() : startScreen());
$("layout-select").onchange = () => {
  state.layout = $("layout-select").value;
  render();
};
$("profile-select").onchange = () => setProfile($("profile-select").value);
$("unmute-accept").onclick = () => {
  $("unmute-dialog").close();
  setMicMuted(false);
};
$("unmute-decline").onclick = () => {
  $("unmute-dialog").close();
  state.invited = false;
  send({ type: "unmute-decline" });
};
// leaving asks first (a misclick would drop a commune out of the briefing), then tells the
// server before the media stops: the server records "left", not a failed connection
$("leave-btn").onclick = () => $("leave-dialog").showModal();
$("leave-cancel").onclick = () => $("leave-dialog").close();
$("leave-confirm").onclick = async () => {
  $("leave-dialog").close();
  state.left = true;
  await state.signaling?.leave();
  hangUp();
  showLeft(t("room.left"), true);
};
// the way back in: the page again, from its pre-join screen (the link is remembered)
$("rejoin-btn").onclick = () => location.reload();
setupChat(send); // before joining too: the form must never submit as a page navigation
// leaving the page is not a network drop: no rejoin while it unloads, and the server is
// told at once (it would otherwise keep the session a while for a resume)
window.addEventListener("pagehide", () => {
  if (!state.left) send({ type: "leave" });
  state.left = true;
});
// keyboard shortcuts: M mute/unmute, H raise/lower hand (not while typing)
document.addEventListener("keydown", (event) => {
  if ($("room").hidden || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (event.target.closest?.("input, textarea, select, dialog")) return;
  const key = event.key.toLowerCase();
  if (key === "m") setMicMuted(!state.micMuted);
  else if (key === "h") setHand(!state.handRaised);
  else return;
  event.preventDefault();
});
Object.assign(state, { setMicMuted, setCameraOff, setHand, setProfile, startScreen, stopScreen, restartIce });

// -- rendering -----------------------------------------------------------------

/** The received track of a publication, if the subscriber connection carries it. */
function trackOf(publication) {
  if (!publication || !state.subscriber || !state.subscribed.has(publication.id)) return null;
  const mid = Object.keys(state.midToPublication).find(
    (key) => state.midToPublication[key] === publication.id);
  const transceiver = state.subscriber.getTransceivers().find((tr) => tr.mid === mid);
  return transceiver?.receiver.track ?? null;
}

/** Point `element` at `track` (only when it changed, so playback is not restarted). */
function attach(element, track) {
  if ((element.srcObject?.getTracks()[0] ?? null) !== track) {
    element.srcObject = track ? new MediaStream([track]) : null;
  }
  if (track && element.paused) element.play().catch(() => {}); // autoplay: the join click allows it
}

// A large meeting (a province with its communes: 40-150 points) has more others than this:
// the chair gets the mosaic, a point the speaker layout (never a grid of everyone)
const MANY = 6;
// the mosaic: 5 x 5 thumbnails per page (3 x 3 on a phone)
const PAGE_SIZE = 25;
const PHONE_PAGE_SIZE = 9;
// the speaker layout of a large meeting names at most this many others in its strip
const STRIP_MAX = 8;

function pageSize() {
  return compact.matches ? PHONE_PAGE_SIZE : PAGE_SIZE;
}

/**
 * What the tiles show: the large tile, the chair inset, the others; and the videos to receive.
 *
 * * grid: every tile (paged when there are more than a page: only one page is received);
 * * speaker: the large tile (screen share, floor holder, active speaker, chair) and the
 *   chair's inset with video, a strip of names without video (at most STRIP_MAX others
 *   in a large meeting: raised hands and the speaker first);
 * * mosaic (moderators only): the screen share or the floor holder large, and the other
 *   cameras in pages of thumbnails; only the page shown is received.
 */
function plan() {
  const others = state.room.participants.filter((p) => p.id !== state.me?.id);
  const find = (participant, source) => participant.publications.find((pub) => pub.source === source);
  const screenOwner = others.find((p) => find(p, "screen"));
  const floor = others.find((p) => p.id === state.room.floor);
  const speaker = others.find((p) => p.id === state.speaker);
  const chairs = others.filter((p) => p.moderator);
  const moderator = Boolean(state.me?.grants?.moderate);
  const many = others.length > MANY;
  let mode = state.layout;
  if (mode === "auto") {
    // a phone shows one large video (the floor, the speaker, the chair) above a strip
    if (many) mode = moderator ? "mosaic" : "speaker";
    else mode = screenOwner || floor || compact.matches ? "speaker" : "grid";
  }
  if (mode === "mosaic" && !moderator) mode = "speaker";
  const tiles = [];
  for (const participant of others) {
    const camera = find(participant, "camera");
    if (camera || find(participant, "microphone")) tiles.push({ participant, source: "camera", publication: camera });
  }
  if (screenOwner) tiles.unshift({ participant: screenOwner, source: "screen", publication: find(screenOwner, "screen") });
  const pick = (participant) => tiles.find((tile) => tile.participant === participant && tile.source === "camera");
  let large = null;
  let inset = null;
  if (mode === "speaker" && tiles.length) {
    large = (screenOwner && tiles[0]) || pick(floor) || pick(speaker) || pick(chairs[0]) || tiles[0];
    inset = chairs.map(pick).find((tile) => tile && tile !== large) ?? null;
  } else if (mode === "mosaic") {
    large = (screenOwner && tiles[0]) || pick(floor) || null;
  }
  let shown = null; // the tiles of the strip (null: all of them)
  let pages = 1;
  if (mode === "grid" || mode === "mosaic") {
    const paged = tiles.filter((tile) => tile !== large);
    const size = pageSize();
    pages = Math.max(1, Math.ceil(paged.length / size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    if (pages > 1 || mode === "mosaic") shown = new Set(paged.slice(state.page * size, (state.page + 1) * size));
  } else if (many) {
    // a point in a large meeting: a short strip of names, raised hands first
    const hands = (state.room.hands || []).map((hand) => hand.participant);
    const rank = (tile) => {
      const queued = hands.indexOf(tile.participant.id);
      if (queued >= 0) return queued;
      if (tile.participant === speaker) return hands.length;
      return hands.length + 1;
    };
    const strip = tiles.filter((tile) => tile !== large && tile !== inset);
    shown = new Set(strip.map((tile, index) => ({ tile, index }))
      .sort((a, b) => rank(a.tile) - rank(b.tile) || a.index - b.index)
      .slice(0, STRIP_MAX).map((entry) => entry.tile));
  }
  state.pages = pages;
  for (const tile of tiles) {
    tile.place = tile === large ? "stage" : tile === inset ? "inset"
      : !shown || shown.has(tile) ? "strip" : "off";
    // weak links: in the speaker layout only the large tile and the chair show video;
    // a tile not shown (another page of the mosaic) receives nothing
    tile.video = Boolean(tile.publication) && state.profile !== "audio" && tile.place !== "off"
      && (mode !== "speaker" || tile.place !== "strip");
    tile.thumb = mode === "mosaic" && tile.place === "strip";
  }
  return { mode, tiles, pages, page: state.page, paged: mode === "mosaic" || pages > 1 };
}

/** Ask the server for exactly the publications this page needs. */
function syncSubscriptions(layout) {
  const existing = new Set(state.room.participants.flatMap((p) => p.publications.map((pub) => pub.id)));
  // the Opus microphones come in the audio slots; another codec (a G.711 encoder) on
  // a track of its own
  const wanted = new Set();
  for (const participant of state.room.participants) {
    if (participant.id === state.me?.id) continue;
    const mic = participant.publications.find((pub) => pub.source === "microphone");
    if (mic && mic.codec !== "opus") wanted.add(mic.id);
  }
  for (const tile of layout.tiles) if (tile.video) wanted.add(tile.publication.id);
  const add = [...wanted].filter((id) => !state.subscribed.has(id));
  const drop = [...state.subscribed].filter((id) => !wanted.has(id) && existing.has(id));
  if (!state.signaling?.open) return;
  if (add.length) send({ type: "subscribe", publications: add });
  if (drop.length) send({ type: "unsubscribe", publications: drop });
  state.subscribed = wanted;
}

/** Tell the server how large each received video is shown: it sends the layer that fits. */
function syncView() {
  if (!state.signaling?.open) return;
  const videos = {};
  for (const node of document.querySelectorAll(".tile")) {
    const id = state.tilePublication?.[node.dataset.key];
    if (!id) continue;
    const width = node.clientWidth;
    // the layers are 320, 640 and 1280 pixels wide: up to 1.25x upscaled still looks sharp;
    // the thumbnails of the mosaic are small whatever the window
    videos[id] = node.classList.contains("thumb") ? "small"
      : width > 800 ? "large" : width > 400 ? "medium" : "small";
  }
  const key = JSON.stringify(Object.entries(videos).sort());
  if (key === state.viewKey) return;
  state.viewKey = key;
  send({ type: "view", videos });
}

function tileNode(tile) {
  const key = `${tile.participant.id}:${tile.source}`;
  let node = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
  if (!node) {
    node = document.createElement("div");
    node.className = "tile";
    node.dataset.key = key;
    node.dataset.participant = tile.participant.id;
    node.dataset.source = tile.source;
    node.classList.toggle("screen", tile.source === "screen");
    const video = Object.assign(document.createElement("video"),
      { autoplay: true, playsInline: true, muted: true });
    const label = document.createElement("span");
    label.className = "name";
    const badges = document.createElement("span");
    badges.className = "tile-badges";
    const paused = document.createElement("span");
    paused.className = "tile-paused";
    paused.setAttribute("role", "status");
    node.append(video, label, badges, paused);
  }
  return node;
}

function render() {
  if (!state.me) return;
  const layout = plan();
  state.mode = layout.mode;
  state.plan = layout.tiles.map((tile) => ({ participant: tile.participant.id, source: tile.source,
    place: tile.place, video: tile.video }));
  syncSubscriptions(layout);
  $("tiles").className = `tiles layout-${layout.mode}`;
  $("tiles").classList.toggle("with-stage", layout.tiles.some((tile) => tile.place === "stage"));
  renderPager(layout);
  const present = new Set();
  const previous = {}; // place -> the tile node placed last there
  state.tilePublication = {};
  for (const tile of layout.tiles) {
    if (tile.place === "off") continue; // another page of the mosaic, or a long strip's tail
    const node = tileNode(tile);
    present.add(node.dataset.key);
    if (tile.video) state.tilePublication[node.dataset.key] = tile.publication.id;
    // in the plan's order (a page of the mosaic reads 1, 2, 3…), moving only what is out of place
    const container = $(tile.place);
    const after = previous[tile.place];
    const wanted = after ? after.nextElementSibling : container.firstElementChild;
    if (node !== wanted) container.insertBefore(node, wanted);
    previous[tile.place] = node;
    const name = tile.source === "screen"
      ? tf("room.screenOf", { name: tile.participant.name }) : tile.participant.name;
    node.querySelector(".name").textContent = name;
    node.title = name; // a thumbnail's label may be cut short
    attach(node.querySelector("video"), tile.video ? trackOf(tile.publication) : null);
    node.classList.toggle("large", tile.place === "stage");
    node.classList.toggle("thumb", Boolean(tile.thumb));
    node.classList.toggle("speaking", tile.source === "camera" && tile.participant.id === state.speaker);
    node.classList.toggle("floor", tile.participant.id === state.room.floor);
    node.classList.toggle("camera-off", !tile.video || Boolean(tile.publication?.muted));
    const paused = tile.video && state.pausedVideos.has(tile.publication?.id);
    node.classList.toggle("video-paused", paused);
    node.querySelector(".tile-paused").textContent = paused ? t("quality.videoPaused") : "";
    const mic = tile.participant.publications.find((pub) => pub.source === "microphone");
    const badges = [];
    if (tile.participant.hand) badges.push("✋");
    if (tile.source === "camera" && (!mic || mic.muted)) badges.push("🔇");
    node.querySelector(".tile-badges").textContent = badges.join(" ");
  }
  for (const node of document.querySelectorAll(".tile")) {
    if (!present.has(node.dataset.key)) node.remove();
  }
  $("alone").hidden = layout.tiles.length > 0;
  syncView();
  // our own camera, last in the strip (not a tile: nothing is received for it)
  const selfVideo = state.stream?.getVideoTracks()[0] ?? null;
  $("self-view").hidden = !selfVideo || state.cameraOff || state.profile === "audio";
  if ($("strip").lastElementChild !== $("self-view")) $("strip").append($("self-view"));
  attach($("self-video"), selfVideo);
  // audio: one element per audio slot (the server puts whoever is heard in a slot and
  // says whom: `audio-slot`), and per microphone received on a track of its own
  const audios = new Set();
  for (const [mid, key] of Object.entries(state.midToPublication)) {
    const transceiver = state.subscriber?.getTransceivers().find((tr) => tr.mid === mid);
    if (transceiver?.receiver.track.kind !== "audio") continue;
    audios.add(key);
    let node = $("audios").querySelector(`audio[data-slot="${CSS.escape(key)}"]`);
    if (!node) {
      node = Object.assign(document.createElement("audio"), { autoplay: true });
      node.dataset.slot = key;
      $("audios").append(node);
    }
    node.dataset.participant = key.startsWith("audio-slot:") ? state.audioSlots[key.slice(11)] ?? ""
      : state.room.participants.find((p) => p.publications.some((pub) => pub.id === key))?.id ?? "";
    attach(node, transceiver.receiver.track);
    if (state.speakerId && node.setSinkId && node.sinkId !== state.speakerId) {
      node.setSinkId(state.speakerId).catch(() => {});
    }
  }
  for (const node of $("audios").querySelectorAll("audio")) {
    if (!audios.has(node.dataset.slot)) node.remove();
  }
  renderParticipants();
  renderControls();
  chair.render();
  panel.setHands(state.me.grants?.moderate ? (state.room.hands || []).length : 0);
  // status bar
  $("rec-indicator").hidden = !state.room.recording;
  $("locked-indicator").hidden = !state.room.locked;
  const floor = state.room.participants.find((p) => p.id === state.room.floor);
  $("floor-indicator").hidden = !floor;
  $("floor-indicator").textContent = floor ? tf("room.floorOther", { name: floor.name }) : "";
}

/** The page buttons of the mosaic (or of a long grid): "Trang 2/6", and the rotation. */
function renderPager(layout) {
  $("pager").hidden = !layout.paged;
  if (!layout.paged) return;
  $("page-label").textContent = tf("room.pageOf", { page: layout.page + 1, pages: layout.pages });
  $("page-prev").disabled = layout.pages < 2;
  $("page-next").disabled = layout.pages < 2;
  $("rotate-label").hidden = layout.mode !== "mosaic";
  $("rotate").checked = state.rotate;
}

/** Show page `page` (wraps around), and restart the rotation's period. */
function setPage(page) {
  const pages = Math.max(1, state.pages);
  state.page = ((page % pages) + pages) % pages;
  render();
  scheduleRotation();
}

let rotationTimer = null;

/** The automatic rotation: the next page every `state.rotationMs` while it is on. */
function scheduleRotation() {
  clearTimeout(rotationTimer);
  rotationTimer = null;
  if (!state.rotate || state.left) return;
  rotationTimer = setTimeout(() => {
    rotationTimer = null;
    if (!state.rotate || state.left) return;
    if (state.mode === "mosaic" && state.pages > 1) setPage(state.page + 1);
    else scheduleRotation();
  }, Math.max(500, Number(state.rotationMs) || 10_000));
}

function setRotation(on) {
  state.rotate = Boolean(on);
  $("rotate").checked = state.rotate;
  scheduleRotation();
}

$("page-prev").onclick = () => setPage(state.page - 1);
$("page-next").onclick = () => setPage(state.page + 1);
$("rotate").onchange = () => setRotation($("rotate").checked);
Object.assign(state, { setPage, setRotation });

function renderParticipants() {
  if (!state.me) return;
  // the chair is choosing a point's profile: keep its open list until it is done
  const choosing = document.activeElement?.closest?.("#participants select");
  if (choosing) {
    if (!choosing.dataset.pending) {
      choosing.dataset.pending = "1";
      choosing.addEventListener("blur", () => setTimeout(renderParticipants), { once: true });
    }
    return;
  }
  $("participants").replaceChildren(...state.room.participants.map((participant) => {
    const item = document.createElement("li");
    item.dataset.participant = participant.id;
    item.classList.toggle("speaking", participant.id === state.speaker);
    const name = document.createElement("span");
    name.className = "pname";
    name.textContent = participant.name + (participant.id === state.me?.id ? ` ${t("room.you")}` : "");
    item.append(name);
    const badges = [];
    const mic = participant.publications.find((pub) => pub.source === "microphone");
    const cam = participant.publications.find((pub) => pub.source === "camera");
    if (participant.moderator) badges.push(["chair", t("room.chairBadge")]);
    if (participant.id === state.speaker) badges.push(["speaking", t("room.speaking")]);
    if (participant.floor) badges.push(["floor", t("room.floorBadge")]);
    if (participant.hand) badges.push(["hand", t("room.handBadge")]);
    if (mic?.blocked) badges.push(["mic-blocked", t("room.blockedBadge")]);
    if (!mic || mic.muted || mic.blocked) badges.push(["mic-muted", t("room.micMuted")]);
    if (!cam || cam.muted || cam.blocked) badges.push(["cam-muted", t("room.camMuted")]);
    for (const [kind, text] of badges) {
      const badge = document.createElement("span");
      badge.className = `badge ${kind}`;
      badge.textContent = text;
      item.append(badge);
    }
    const quality = state.quality[participant.id];
    if (quality) item.append(qualityBadge(quality));
    item.append(...chair.actions(participant));
    return item;
  }));
}

function renderControls() {
  $("mute-btn").textContent = state.micMuted ? t("room.unmute") : t("room.mute");
  $("mute-btn").classList.toggle("active", state.micMuted);
  $("camera-btn").textContent = state.cameraOff ? t("room.cameraOn") : t("room.cameraOff");
  $("camera-btn").classList.toggle("active", state.cameraOff);
  $("hand-btn").textContent = state.handRaised ? t("room.lowerHand") : t("room.raiseHand");
  $("hand-btn").classList.toggle("active", state.handRaised);
  $("hand-btn").hidden = !state.me?.grants?.publish || Boolean(state.me?.grants?.moderate);
  $("screen-btn").textContent = state.screen ? t("room.stopShare") : t("room.shareScreen");
  $("screen-btn").classList.toggle("active", Boolean(state.screen));
  // phones' browsers cannot share a screen (no getDisplayMedia): no button there
  $("screen-btn").hidden = !state.me?.grants?.publish || !navigator.mediaDevices?.getDisplayMedia;
  $("layout-mosaic").hidden = !state.me?.grants?.moderate; // the mosaic is the chair's
}

// a phone shows one large video in its auto layout, and smaller pages of the mosaic
compact.addEventListener("change", () => render());

prejoin().catch((error) => {
  console.error(error);
  notice(`${t("room.error")}: ${error.message}`);
});

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(syncView, 300); // a larger tile asks for a better layer
});
