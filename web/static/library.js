// The recording page (library_recording.html): source choice, the speaking timeline, and the
// composition followed live.
// Timeline offsets are seconds from the start of the recording; each source has a base
// (seconds from the start of the recording to its own time 0), so a jump is offset - base.
// While the composition is queued or running the page asks /recordings/{id}/composition every
// few seconds, shows its progress, and puts the finished MP4 in the player without a reload
// (composing again: the earlier MP4 plays meanwhile, the new one replaces it when done).
(function () {
  "use strict";
  const page = document.getElementById("recording");
  const video = document.getElementById("player");
  const source = document.getElementById("source");
  const buttons = Array.from(document.querySelectorAll("#timeline button[data-offset]"));

  function base() {
    return parseFloat(video.dataset.base || "0") || 0;
  }

  function seek(offset, play) {
    const target = Math.max(0, offset - base());
    const go = function () {
      video.currentTime = target;
      if (!play) return;
      const played = video.play();
      if (played && played.catch) played.catch(function () {});
    };
    if (video.readyState >= 1) go();
    else video.addEventListener("loadedmetadata", go, { once: true });
  }

  function jump(offset) {
    seek(offset, true);
  }

  /** Play `url` (time 0 at `fileBase` s into the recording) from the same moment. */
  function load(url, fileBase, play) {
    const at = video.currentTime + base();
    video.dataset.base = String(fileBase);
    video.src = url;
    seek(at, play);
  }

  if (video) {
    buttons.forEach(function (button) {
      button.addEventListener("click", function () {
        jump(parseFloat(button.dataset.offset) || 0);
      });
    });

    if (source) {
      source.addEventListener("change", function () {
        const option = source.selectedOptions[0];
        load(option.value, option.dataset.base || "0", true);
      });
    }

    video.addEventListener("timeupdate", function () {
      const now = video.currentTime + base();
      let current = null;
      buttons.forEach(function (button) {
        if ((parseFloat(button.dataset.offset) || 0) <= now) current = button;
      });
      buttons.forEach(function (button) {
        button.classList.toggle("current", button === current);
      });
    });
  }

  // -- the composition, live ------------------------------------------------------------
  if (!page || !page.dataset.follow) return;
  const follow = (window.library = { seen: [], pollMs: window.libraryPollMs || 3000 });
  const show = function (id, visible) {
    const node = document.getElementById(id);
    if (node) node.hidden = !visible;
  };

  /** A composed MP4 not shown yet (the first, or one composed again): into the player. */
  function offer(composed) {
    const url = composed.url + "?v=" + encodeURIComponent(composed.version);
    page.dataset.version = composed.version;
    if (!video) {
      location.reload(); // no player on the page (nothing else to play): the page again
      return;
    }
    let option = source && source.querySelector("option[data-composed]");
    if (source && !option) {
      option = document.createElement("option");
      option.dataset.composed = "1";
      option.dataset.base = "0";
      option.textContent = page.dataset.composedLabel;
      source.prepend(option);
    }
    if (option) {
      option.value = url;
      option.selected = true;
    }
    load(url, 0, !video.paused);
    show("not-composed", false);
    show("composed-ready", true);
    // the download link: the new file
    let item = document.querySelector('#downloads li[data-kind="composed"]');
    if (!item) {
      item = document.createElement("li");
      item.dataset.kind = "composed";
      item.append(document.createElement("a"), " ", document.createElement("span"));
      item.querySelector("span").className = "muted";
      document.getElementById("downloads")?.prepend(item);
    }
    const link = item.querySelector("a");
    link.href = composed.url + "?download=1&v=" + encodeURIComponent(composed.version);
    link.download = composed.name;
    link.textContent = page.dataset.composedKind;
    item.querySelector("span").textContent =
      "(" + composed.name + ", " + (composed.size / 1048576).toFixed(1) + " MB)";
  }

  async function poll() {
    let data;
    try {
      const response = await fetch("/recordings/" + page.dataset.recording + "/composition", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      const json = (response.headers.get("Content-Type") || "").includes("json");
      if (!json || response.status === 404) return; // signed out, or no longer in the user's units
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      data = await response.json();
    } catch (error) {
      console.warn("composition status", error);
      setTimeout(poll, follow.pollMs * 4); // the network or a busy server: again, later
      return;
    }
    follow.seen.push({ state: data.state, progress: data.progress });
    document.getElementById("composition").innerHTML = data.html; // the server's own markup
    const underWay = data.state === "queued" || data.state === "running";
    show("recomposing", underWay && data.previous);
    if (data.composed && data.composed.version !== page.dataset.version) offer(data.composed);
    if (underWay) {
      setTimeout(poll, follow.pollMs);
      return;
    }
    follow.done = data.state;
    const form = document.getElementById("compose-form");
    if (form) {
      form.hidden = false;
      const button = form.querySelector("button");
      if (button.dataset.again) button.textContent = button.dataset.again;
    }
  }
  setTimeout(poll, follow.pollMs);
})();
