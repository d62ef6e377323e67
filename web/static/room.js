// The meeting page: pre-join device check, then the room (docs/PROTOCOL.md, version 1).
//
// Two peer connections (the LiveKit model): `publisher` carries our microphone and
// camera (we offer), `subscriber` carries everyone else (the server offers, its
// `tracks` map labels each mid with a publication id).  The page state is exposed
// as `window.conference` for the end-to-end tests.

import { Signaling } from "./signaling.js";
import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const meeting = $("prejoin").dataset.meeting;

const state = {
  session: null, // {token, name, identity, role} from /m/{meeting}/session
  stream: null, // local camera + microphone
  signaling: null,
  publisher: null,
  subscriber: null,
  me: null, // our participant description from `joined`
  room: { participants: [] },
  speaker: null,
  midToPublication: {}, // subscriber mid -> publication id
  negotiations: [], // subscriber offers handled: [{tracks, at}] (for tests and debugging)
  micMuted: false,
  cameraOff: false,
  left: false,
};
window.conference = state;

// -- pre-join ------------------------------------------------------------------

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

/** A user-facing message for a getUserMedia failure. */
function deviceMessage(error) {
  if (!navigator.mediaDevices) return t("prejoin.insecure");
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return t("prejoin.blocked");
    case "NotReadableError":
    case "AbortError":
      return t("prejoin.busy");
    default:
      return t("prejoin.nodevice");
  }
}

/** Open the chosen devices; falls back to audio or video alone if one is missing. */
async function openDevices() {
  const cameraId = $("camera-select").value;
  const micId = $("mic-select").value;
  const video = cameraId ? { deviceId: { exact: cameraId } } : true;
  const audio = micId ? { deviceId: { exact: micId } } : true;
  state.stream?.getTracks().forEach((track) => track.stop());
  state.stream = null;
  let firstError = null;
  for (const constraints of [{ audio, video }, { audio }, { video }]) {
    try {
      state.stream = await navigator.mediaDevices.getUserMedia(constraints);
      break;
    } catch (error) {
      firstError ??= error;
      if (error.name === "NotAllowedError") break; // blocked: asking again changes nothing
    }
  }
  const complete = state.stream?.getAudioTracks().length && state.stream?.getVideoTracks().length;
  $("device-error").textContent = complete ? "" : deviceMessage(firstError);
  $("device-error").hidden = Boolean(complete);
  $("preview").srcObject = state.stream;
  $("join").disabled = !state.stream;
  meterLevel();
}

/** Fill the camera and microphone choices (labels are known once access is granted). */
async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  for (const [select, kind] of [["camera-select", "videoinput"], ["mic-select", "audioinput"]]) {
    const current = state.stream
      ?.getTracks()
      .find((track) => (kind === "videoinput" ? track.kind === "video" : track.kind === "audio"))
      ?.getSettings().deviceId;
    $(select).replaceChildren(
      ...devices
        .filter((device) => device.kind === kind)
        .map((device, index) => new Option(device.label || `${kind} ${index + 1}`, device.deviceId,
          false, device.deviceId === current)),
    );
  }
}

let meterContext = null;
/** A live microphone level on the pre-join screen. */
function meterLevel() {
  const track = state.stream?.getAudioTracks()[0];
  if (!track) return;
  meterContext?.close();
  meterContext = new AudioContext();
  const analyser = meterContext.createAnalyser();
  meterContext.createMediaStreamSource(new MediaStream([track])).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const tick = () => {
    if (meterContext?.state === "closed" || !$("prejoin").isConnected || $("prejoin").hidden) return;
    analyser.getFloatTimeDomainData(samples);
    $("level").value = Math.min(1, Math.sqrt(samples.reduce((s, x) => s + x * x, 0) / samples.length) * 4);
    requestAnimationFrame(tick);
  };
  tick();
}

async function prejoin() {
  const response = await fetch(`/m/${encodeURIComponent(meeting)}/session`, {
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) {
    $("prejoin").hidden = true;
    notice(response.status === 403 ? t("error.wrongmeeting") : t("error.badlink"));
    return;
  }
  state.session = await response.json();
  $("name").value = state.session.name;
  $("name").readOnly = true; // the display name comes from the invitation
  if (!navigator.mediaDevices) {
    $("device-error").textContent = t("prejoin.insecure");
    $("device-error").hidden = false;
    return;
  }
  await openDevices();
  if (state.stream) await listDevices();
  $("camera-select").onchange = $("mic-select").onchange = openDevices;
  $("join").onclick = join;
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
      state.signaling.send({ type: "candidate", pc: name, candidate: event.candidate.toJSON() });
    }
  };
  return pc;
}

async function join() {
  $("join").disabled = true;
  $("join").textContent = t("prejoin.joining");
  meterContext?.close();
  const signaling = new Signaling(meeting, state.session.token);
  state.signaling = signaling;
  let joined;
  try {
    joined = await signaling.join();
  } catch (error) {
    $("join").textContent = t("prejoin.join");
    $("join").disabled = false;
    notice(t(`leave.${error.code}`) !== `leave.${error.code}` ? t(`leave.${error.code}`)
      : `${t("room.error")}: ${error.message}`);
    return;
  }
  state.me = joined.participant;
  state.room = joined.room;
  state.speaker = joined.room.speaker ?? null;
  state.iceServers = joined.iceServers || [];
  for (const type of ["room", "offer", "speaker", "muted-by-moderator", "leave", "error", "close"]) {
    signaling.addEventListener(type, (event) => handlers[type](event.detail));
  }
  $("prejoin").hidden = true;
  $("room").hidden = false;
  render();
  if (state.me.grants?.publish !== false && state.stream) await publish();
}

/** Offer our microphone and camera on the publisher connection. */
async function publish() {
  const pc = peerConnection("publisher", state.iceServers);
  state.publisher = pc;
  const sources = new Map();
  for (const track of state.stream.getTracks()) {
    const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [state.stream] });
    sources.set(transceiver, track.kind === "audio" ? "microphone" : "camera");
  }
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const tracks = {};
  for (const [transceiver, source] of sources) tracks[transceiver.mid] = source;
  pc.sdpSent = true;
  const answer = await state.signaling.request(
    { type: "offer", pc: "publisher", sdp: pc.localDescription.sdp, tracks }, "answer");
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
}

let subscriberQueue = Promise.resolve();

/** Answer a server offer on the subscriber connection (offers are handled in order). */
async function answerSubscriber(message) {
  if (!state.subscriber) {
    state.subscriber = peerConnection("subscriber", state.iceServers);
    state.subscriber.ontrack = () => render();
  }
  const pc = state.subscriber;
  Object.assign(state.midToPublication, message.tracks || {});
  state.negotiations.push({ tracks: message.tracks, at: performance.now() });
  await pc.setRemoteDescription({ type: "offer", sdp: message.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  await gathered(pc);
  pc.sdpSent = true;
  state.signaling.send({ type: "answer", pc: "subscriber", sdp: pc.localDescription.sdp });
  state.negotiations.at(-1).answered = performance.now();
  render();
}

const handlers = {
  room(message) {
    state.room = message;
    state.speaker = message.speaker ?? null;
    render();
  },
  offer(message) {
    if (message.pc !== "subscriber") return;
    subscriberQueue = subscriberQueue.then(() => answerSubscriber(message)).catch((error) => {
      console.error("subscriber negotiation failed", error);
    });
  },
  speaker(message) {
    state.speaker = message.participant ?? null;
    render();
  },
  "muted-by-moderator"(message) {
    if (message.source === "microphone" && message.muted) {
      setMicMuted(true);
      notice(t("room.mutedByModerator"));
    }
  },
  leave(message) {
    state.leftReason = message.reason;
  },
  error(message) {
    console.warn("server error", message);
  },
  close() {
    if (state.left) return;
    hangUp();
    const reason = state.leftReason || "disconnected";
    notice(t(`leave.${reason}`) !== `leave.${reason}` ? t(`leave.${reason}`) : t("leave.disconnected"));
  },
};

// -- controls ------------------------------------------------------------------

function setMicMuted(muted) {
  state.micMuted = muted;
  state.stream?.getAudioTracks().forEach((track) => (track.enabled = !muted));
  state.signaling.send({ type: "mute", source: "microphone", muted });
  $("mute-btn").textContent = muted ? t("room.unmute") : t("room.mute");
  $("mute-btn").classList.toggle("active", muted);
}

function setCameraOff(off) {
  state.cameraOff = off;
  state.stream?.getVideoTracks().forEach((track) => (track.enabled = !off));
  state.signaling.send({ type: "mute", source: "camera", muted: off });
  $("camera-btn").textContent = off ? t("room.cameraOn") : t("room.cameraOff");
  $("camera-btn").classList.toggle("active", off);
}

function hangUp() {
  state.left = true;
  state.publisher?.close();
  state.subscriber?.close();
  state.stream?.getTracks().forEach((track) => track.stop());
  $("room").hidden = true;
}

$("mute-btn").onclick = () => setMicMuted(!state.micMuted);
$("camera-btn").onclick = () => setCameraOff(!state.cameraOff);
$("leave-btn").onclick = () => {
  hangUp();
  state.signaling.leave();
  notice(t("room.left"));
};
window.conference.setMicMuted = setMicMuted;
window.conference.setCameraOff = setCameraOff;

// -- rendering -----------------------------------------------------------------

/** The received track of a publication, if the subscriber connection carries it. */
function trackOf(publication) {
  if (!publication || !state.subscriber) return null;
  const mid = Object.keys(state.midToPublication).find(
    (key) => state.midToPublication[key] === publication.id);
  const transceiver = state.subscriber.getTransceivers().find((tr) => tr.mid === mid);
  return transceiver?.receiver.track ?? null;
}

/** Point `element` at `track` (only when it changed, so playback is not restarted). */
function attach(element, track) {
  if ((element.srcObject?.getTracks()[0] ?? null) === track) return;
  element.srcObject = track ? new MediaStream([track]) : null;
  if (track) element.play().catch(() => {}); // autoplay: the join click allows it
}

function tile(participant) {
  let node = document.querySelector(`.tile[data-participant="${CSS.escape(participant.id)}"]`);
  if (!node) {
    node = document.createElement("div");
    node.className = "tile";
    node.dataset.participant = participant.id;
    const video = Object.assign(document.createElement("video"),
      { autoplay: true, playsInline: true, muted: true });
    const audio = Object.assign(document.createElement("audio"), { autoplay: true });
    const label = document.createElement("span");
    label.className = "name";
    node.append(video, audio, label);
    $("tiles").append(node);
  }
  return node;
}

function render() {
  const others = state.room.participants.filter((p) => p.id !== state.me?.id);
  // tiles: one per remote participant, video + audio + name
  const present = new Set();
  for (const participant of others) {
    const camera = participant.publications.find((pub) => pub.source === "camera");
    const microphone = participant.publications.find((pub) => pub.source === "microphone");
    if (!camera && !microphone) continue;
    present.add(participant.id);
    const node = tile(participant);
    node.querySelector(".name").textContent = participant.name;
    attach(node.querySelector("video"), trackOf(camera));
    attach(node.querySelector("audio"), trackOf(microphone));
    node.classList.toggle("speaking", participant.id === state.speaker);
    node.classList.toggle("camera-off", Boolean(camera?.muted || !camera));
  }
  for (const node of document.querySelectorAll(".tile")) {
    if (!present.has(node.dataset.participant)) node.remove();
  }
  $("alone").hidden = present.size > 0;
  // participant list with mute state
  $("participants").replaceChildren(...state.room.participants.map((participant) => {
    const item = document.createElement("li");
    item.dataset.participant = participant.id;
    item.classList.toggle("speaking", participant.id === state.speaker);
    const name = document.createElement("span");
    name.textContent = participant.name + (participant.id === state.me?.id ? ` ${t("room.you")}` : "");
    item.append(name);
    const badges = [];
    const mic = participant.publications.find((pub) => pub.source === "microphone");
    const cam = participant.publications.find((pub) => pub.source === "camera");
    if (participant.id === state.speaker) badges.push(["speaking", t("room.speaking")]);
    if (!mic || mic.muted || mic.blocked) badges.push(["mic-muted", t("room.micMuted")]);
    if (!cam || cam.muted || cam.blocked) badges.push(["cam-muted", t("room.camMuted")]);
    for (const [kind, text] of badges) {
      const badge = document.createElement("span");
      badge.className = `badge ${kind}`;
      badge.textContent = text;
      item.append(badge);
    }
    return item;
  }));
}

prejoin().catch((error) => {
  console.error(error);
  notice(`${t("room.error")}: ${error.message}`);
});
