// Small behaviours of the office pages, bound here rather than in inline attributes
// (the Content-Security-Policy allows no inline script): a print button, and forms that
// ask for confirmation before they post.
for (const button of document.querySelectorAll("[data-print]")) {
  button.addEventListener("click", () => window.print());
}
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
