// Pre-join screen: camera and microphone choice with a live preview, a microphone
// level meter, a speaker test, join muted or not.  Standard APIs only
// (getUserMedia, enumerateDevices, Web Audio), so Firefox and Safari work too.

import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

/** A user-facing message for a getUserMedia failure (missing, blocked, busy device). */
export function deviceMessage(error) {
  if (!navigator.mediaDevices) return t("prejoin.insecure");
  switch (error?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return t("prejoin.blocked");
    case "NotReadableError":
    case "AbortError":
    case "TrackStartError":
      return t("prejoin.busy");
    default: // NotFoundError, OverconstrainedError, ...
      return t("prejoin.nodevice");
  }
}

export class Prejoin {
  /** @param {object} state  the page state (`stream` is set here) */
  constructor(state) {
    this.state = state;
    this.meterContext = null;
    this.error = null;
  }

  /** Open the chosen devices; falls back to audio or video alone if one is missing. */
  async open() {
    const state = this.state;
    const cameraId = $("camera-select").value;
    const micId = $("mic-select").value;
    // 720p when the camera has it: the top simulcast layer; the lower ones are scaled down
    const size = { width: { ideal: 1280 }, height: { ideal: 720 } };
    const video = cameraId ? { deviceId: { exact: cameraId }, ...size } : size;
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
    this.error = firstError;
    const complete = state.stream?.getAudioTracks().length && state.stream?.getVideoTracks().length;
    const message = complete ? "" : `${deviceMessage(firstError)} ${t("prejoin.joinWithout")}`;
    $("device-error").textContent = message;
    $("device-error").hidden = Boolean(complete);
    $("device-error").dataset.error = complete ? "" : firstError?.name || "missing";
    $("preview").srcObject = state.stream;
    $("join").disabled = false; // without devices one can still watch and listen
    this.meter();
  }

  /** Fill the camera and microphone choices (labels are known once access is granted). */
  async list() {
    const devices = await navigator.mediaDevices.enumerateDevices();
    for (const [select, kind] of [["camera-select", "videoinput"], ["mic-select", "audioinput"]]) {
      const current = this.state.stream
        ?.getTracks()
        .find((track) => (kind === "videoinput" ? track.kind === "video" : track.kind === "audio"))
        ?.getSettings().deviceId;
      $(select).replaceChildren(
        ...devices
          .filter((device) => device.kind === kind)
          .map((device, index) => new Option(
            device.label || `${t(kind === "videoinput" ? "prejoin.camera" : "prejoin.microphone")} ${index + 1}`,
            device.deviceId,
            false, device.deviceId === current)),
      );
    }
    this.listSpeakers(devices);
  }

  /** Speakers: only where the browser can choose the output (setSinkId; not Safari). */
  listSpeakers(devices) {
    const outputs = devices.filter((device) => device.kind === "audiooutput" && device.deviceId);
    const supported = "setSinkId" in HTMLMediaElement.prototype;
    $("speaker-label").hidden = !supported || outputs.length === 0;
    if ($("speaker-label").hidden) return;
    $("speaker-select").replaceChildren(...outputs.map((device, index) =>
      new Option(device.label || `${t("prejoin.speaker")} ${index + 1}`, device.deviceId)));
    this.state.speakerId = $("speaker-select").value;
    $("speaker-select").onchange = () => (this.state.speakerId = $("speaker-select").value);
  }

  /** A live microphone level (RMS of the last analyser window), in #level. */
  meter() {
    const track = this.state.stream?.getAudioTracks()[0];
    this.meterContext?.close();
    this.meterContext = null;
    if (!track) return;
    const context = new AudioContext();
    this.meterContext = context;
    const analyser = context.createAnalyser();
    context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (context.state === "closed" || $("prejoin").hidden) return;
      analyser.getFloatTimeDomainData(samples);
      const rms = Math.sqrt(samples.reduce((s, x) => s + x * x, 0) / samples.length);
      $("level").value = Math.min(1, rms * 4);
      this.state.prejoinLevel = Math.max(this.state.prejoinLevel || 0, $("level").value);
      requestAnimationFrame(tick);
    };
    if (context.state === "suspended") context.resume().catch(() => {});
    tick();
  }

  /** Play a short two-note tone on the chosen speakers. */
  async speakerTest() {
    const context = new AudioContext();
    await context.resume().catch(() => {});
    const gain = context.createGain();
    gain.gain.value = 0.2;
    if (this.state.speakerId) {
      // through an <audio> element, which can be sent to the chosen output
      const sink = context.createMediaStreamDestination();
      gain.connect(sink);
      const player = new Audio();
      player.srcObject = sink.stream;
      await player.setSinkId(this.state.speakerId).catch(() => {});
      player.play().catch(() => {});
      setTimeout(() => (player.srcObject = null), 1000);
    } else {
      gain.connect(context.destination);
    }
    for (const [frequency, start] of [[660, 0], [880, 0.35]]) {
      const oscillator = context.createOscillator();
      oscillator.frequency.value = frequency;
      oscillator.connect(gain);
      oscillator.start(context.currentTime + start);
      oscillator.stop(context.currentTime + start + 0.3);
    }
    this.state.speakerTested = (this.state.speakerTested || 0) + 1;
    $("speaker-hint").hidden = false;
    setTimeout(() => context.close(), 1000);
  }

  close() {
    this.meterContext?.close();
    this.meterContext = null;
  }

  /** Set up the screen; `onJoin` runs when the user presses the join button. */
  async start(onJoin) {
    $("speaker-test").onclick = () => this.speakerTest();
    $("join").onclick = onJoin;
    if (!navigator.mediaDevices) {
      $("device-error").textContent = t("prejoin.insecure");
      $("device-error").hidden = false;
      $("join").disabled = false;
      return;
    }
    await this.open();
    if (this.state.stream) await this.list();
    $("camera-select").onchange = $("mic-select").onchange = () => this.open();
  }
}
