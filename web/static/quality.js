// Weak links: the bandwidth profile of what this page sends, and the connection
// quality of what it receives (getStats: loss, round-trip time, bitrate).

import { t, tf } from "./i18n.js";

/**
 * The camera is published in three simulcast layers (lowest first; RIDs as the
 * server expects, see conference/sfu/simulcast.py).  The server forwards one layer to
 * each viewer, chosen for its link, and asks this page to stop encoding a layer nobody
 * receives ("layers" message).
 */
export const SIMULCAST = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_400_000 },
];

/** Profiles: the highest layer this page sends (-1: none, audio only). */
export const PROFILES = {
  high: { top: 2 }, // ~1.5 Mbps with audio
  low: { top: 1 }, // ~650 kbps with audio
  audio: { top: -1 }, // audio only: the camera stops sending
};

/**
 * Apply `profile` and the server's wanted layers `wanted` (rid -> bool; missing: wanted)
 * to the camera sender `sender` (if any).  A sender without simulcast (one encoding)
 * gets the top allowed layer's cap.
 */
export async function applyProfile(sender, profile, wanted = {}) {
  if (!sender || !sender.track) return;
  const top = (PROFILES[profile] || PROFILES.high).top;
  const parameters = sender.getParameters();
  if (!parameters.encodings || !parameters.encodings.length) parameters.encodings = [{}];
  const simulcast = parameters.encodings.length > 1;
  parameters.encodings.forEach((encoding) => {
    if (simulcast) {
      const layer = SIMULCAST.findIndex((l) => l.rid === encoding.rid);
      encoding.active = layer >= 0 && layer <= top && wanted[encoding.rid] !== false;
    } else {
      encoding.active = top >= 0;
      if (top >= 0) {
        encoding.maxBitrate = SIMULCAST[top].maxBitrate;
        encoding.scaleResolutionDownBy = SIMULCAST[top].scaleResolutionDownBy;
      }
    }
  });
  await sender.setParameters(parameters);
}

/** A level from loss (%) and round-trip time (ms). */
export function level(loss, rtt) {
  if (loss >= 8 || rtt >= 400) return "poor";
  if (loss >= 2 || rtt >= 150) return "fair";
  return "good";
}

/** Samples getStats every `periodMs` into `state.quality`: participant id -> {loss, rtt, kbps, level}. */
export class QualityMonitor {
  constructor(state, periodMs = 2000) {
    this.state = state;
    this.previous = new Map(); // stats id -> {lost, received, bytes, at}
    this.timer = setInterval(() => this.sample().catch(() => {}), periodMs);
  }

  stop() {
    clearInterval(this.timer);
  }

  static async rtt(pc) {
    if (!pc) return null;
    let rtt = null;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded"
          && typeof s.currentRoundTripTime === "number") rtt = s.currentRoundTripTime * 1000;
    });
    return rtt;
  }

  async sample() {
    const state = this.state;
    const quality = {};
    const pc = state.subscriber;
    const publicationOwner = {};
    for (const participant of state.room.participants || []) {
      for (const publication of participant.publications) publicationOwner[publication.id] = participant.id;
    }
    const downRtt = await QualityMonitor.rtt(pc);
    if (pc) {
      const stats = await pc.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp") return;
        const owner = publicationOwner[state.midToPublication[s.mid]];
        if (!owner) return;
        const before = this.previous.get(s.id);
        const now = { lost: s.packetsLost || 0, received: s.packetsReceived || 0,
          bytes: s.bytesReceived || 0, at: s.timestamp };
        this.previous.set(s.id, now);
        if (!before || now.at <= before.at) return;
        const entry = (quality[owner] ??= { lost: 0, received: 0, bits: 0, seconds: 0 });
        entry.lost += Math.max(0, now.lost - before.lost);
        entry.received += Math.max(0, now.received - before.received);
        entry.bits += 8 * Math.max(0, now.bytes - before.bytes);
        entry.seconds = Math.max(entry.seconds, (now.at - before.at) / 1000);
      });
    }
    const result = {};
    for (const [owner, entry] of Object.entries(quality)) {
      const total = entry.lost + entry.received;
      const loss = total ? (100 * entry.lost) / total : 0;
      const rtt = downRtt ?? 0;
      result[owner] = { loss, rtt, kbps: entry.seconds ? entry.bits / entry.seconds / 1000 : 0,
        level: level(loss, rtt) };
    }
    // our own uplink: what the server reports back about our sending (RTCP receiver reports)
    if (state.publisher && state.me) {
      let loss = 0;
      let rtt = null;
      let bits = 0;
      (await state.publisher.getStats()).forEach((s) => {
        if (s.type === "remote-inbound-rtp") {
          loss = Math.max(loss, 100 * (s.fractionLost || 0));
          if (typeof s.roundTripTime === "number") rtt = Math.max(rtt ?? 0, s.roundTripTime * 1000);
        }
        if (s.type === "outbound-rtp") {
          const before = this.previous.get(s.id);
          const now = { bytes: s.bytesSent || 0, at: s.timestamp };
          this.previous.set(s.id, now);
          if (before && now.at > before.at) bits += (8 * (now.bytes - before.bytes)) / ((now.at - before.at) / 1000);
        }
      });
      rtt ??= (await QualityMonitor.rtt(state.publisher)) ?? 0;
      result[state.me.id] = { loss, rtt, kbps: bits / 1000, level: level(loss, rtt) };
    }
    state.quality = result;
    state.onQuality?.();
  }
}

/** A small indicator element for `entry` ({loss, rtt, kbps, level}). */
export function qualityBadge(entry) {
  const badge = document.createElement("span");
  badge.className = `quality ${entry.level}`;
  badge.dataset.level = entry.level;
  const details = tf("quality.details", {
    loss: entry.loss.toFixed(1), rtt: Math.round(entry.rtt), rate: Math.round(entry.kbps) });
  badge.title = `${t(`quality.${entry.level}`)}: ${details}`;
  badge.setAttribute("aria-label", badge.title);
  badge.textContent = "●";
  return badge;
}

const isRed = (codec) => codec.mimeType.toLowerCase() === "audio/red";

/** Whether this browser can receive RED (RFC 2198 redundant audio): told to the server
 *  when joining, so that it sends every Opus frame twice (the copy rides in the next
 *  packet) and one lost packet on a weak link costs no sound. */
export const RED_SUPPORTED = Boolean(
  globalThis.RTCRtpReceiver?.getCapabilities?.("audio")?.codecs.some(isRed),
);

/** Send the microphone as RED where the browser can: RED first among the audio codecs
 *  (the server answers in the offer's order, and a browser sends the first codec). */
export function preferRed(transceiver) {
  const codecs = RTCRtpReceiver.getCapabilities?.("audio")?.codecs ?? [];
  if (!codecs.some(isRed) || !transceiver.setCodecPreferences) return false;
  try {
    transceiver.setCodecPreferences([...codecs.filter(isRed), ...codecs.filter((c) => !isRed(c))]);
    return true;
  } catch {
    return false; // plain Opus, with its in-band FEC
  }
}
