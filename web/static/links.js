// The points' links page (meeting_links.html): copy one link, copy the whole message, print.
// No inline script (the Content-Security-Policy forbids it).

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // an http:// page or an old browser: select and copy the old way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = button.dataset.copied;
  setTimeout(() => (button.textContent = label), 2000);
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", () => {
    const input = button.closest("tr").querySelector("input.link");
    copy(input.value, button);
  });
}
document.getElementById("copy-all").addEventListener("click", (event) => {
  copy(document.getElementById("share-text").value, event.currentTarget);
});
document.getElementById("print-links").addEventListener("click", () => window.print());
