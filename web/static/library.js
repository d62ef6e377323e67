// The recording page (library_recording.html): source choice and the speaking timeline.
// Timeline offsets are seconds from the start of the recording; each source has a base
// (seconds from the start of the recording to its own time 0), so a jump is offset - base.
(function () {
  "use strict";
  const video = document.getElementById("player");
  if (!video) return;
  const source = document.getElementById("source");
  const buttons = Array.from(document.querySelectorAll("#timeline button[data-offset]"));

  function base() {
    return parseFloat(video.dataset.base || "0") || 0;
  }

  function jump(offset) {
    const target = Math.max(0, offset - base());
    const go = function () {
      video.currentTime = target;
      const played = video.play();
      if (played && played.catch) played.catch(function () {});
    };
    if (video.readyState >= 1) go();
    else video.addEventListener("loadedmetadata", go, { once: true });
  }

  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      jump(parseFloat(button.dataset.offset) || 0);
    });
  });

  if (source) {
    source.addEventListener("change", function () {
      const option = source.selectedOptions[0];
      const at = video.currentTime + base();
      video.dataset.base = option.dataset.base || "0";
      video.src = option.value;
      jump(at);
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
})();
