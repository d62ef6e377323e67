// WebSocket signaling, protocol version 1 (docs/PROTOCOL.md).
// A thin wrapper: join, send JSON messages, dispatch received ones by type.

export class Signaling extends EventTarget {
  /** @param {string} meeting  meeting ID; @param {string} token  access token (JWT) */
  constructor(meeting, token) {
    super();
    this.meeting = meeting;
    this.token = token;
    this.ws = null;
  }

  /** Open the socket and join; resolves with the `joined` message.
   *  `options` go into the join message (e.g. `{autoSubscribe: false}`). */
  join(options = {}) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/meetings/${encodeURIComponent(this.meeting)}`;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      this.ws = ws;
      let joined = false;
      ws.onopen = () => this.send({ type: "join", version: 1, token: this.token, ...options });
      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (!joined) {
          if (message.type === "joined") {
            joined = true;
            resolve(message);
          } else if (message.type === "error") {
            reject(Object.assign(new Error(message.message), { code: message.code }));
          }
          return;
        }
        // one event per message type: "room", "offer", "answer", "speaker", ...
        this.dispatchEvent(new CustomEvent(message.type, { detail: message }));
      };
      ws.onclose = (event) => {
        if (!joined) reject(Object.assign(new Error("closed"), { code: `close-${event.code}` }));
        this.dispatchEvent(new CustomEvent("close", { detail: { code: event.code } }));
      };
    });
  }

  get open() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN);
  }

  send(message) {
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  /** Send `message` and wait for the next message of type `reply`. */
  request(message, reply, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeEventListener(reply, onReply);
        this.removeEventListener("close", onClose);
        reject(new Error(`no ${reply} within ${timeoutMs} ms`));
      }, timeoutMs);
      const onReply = (event) => {
        clearTimeout(timer);
        this.removeEventListener("close", onClose);
        resolve(event.detail);
      };
      const onClose = () => {
        clearTimeout(timer);
        this.removeEventListener(reply, onReply);
        reject(new Error("connection closed"));
      };
      this.addEventListener(reply, onReply, { once: true });
      this.addEventListener("close", onClose, { once: true });
      this.send(message);
    });
  }

  /** Say goodbye and wait (at most 2 s) until the server has closed the socket. */
  leave() {
    const ws = this.ws;
    this.send({ type: "leave" });
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        ws.close();
        resolve();
      }, 2000);
      ws.addEventListener("close", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
