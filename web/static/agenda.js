// The meeting form's agenda (meeting_form.html): "Thêm dòng" adds a row, ✕ removes one.
// Rows are renumbered so that the server reads agenda_*_0..N-1 in the order shown (it
// accepts any numbers, in order). Without JavaScript the form has three blank rows and a
// cleared row removes its item. No inline script (the Content-Security-Policy forbids it).
const table = document.querySelector("table.agenda-rows");
const add = document.getElementById("agenda-add");
if (table && add) {
  const body = table.tBodies[0];
  const limit = Number(table.dataset.limit) || 100;

  const renumber = () => {
    Array.from(body.rows).forEach((row, index) => {
      row.querySelector(".agenda-number").textContent = String(index + 1);
      for (const field of row.querySelectorAll("[name^=agenda_]")) {
        field.name = field.name.replace(/_\d+$/, `_${index}`);
      }
      for (const labelled of row.querySelectorAll("[aria-label]")) {
        labelled.setAttribute("aria-label", labelled.getAttribute("aria-label").replace(/\d+$/, String(index + 1)));
      }
    });
    add.disabled = body.rows.length >= limit;
  };
  const clear = (row) => {
    for (const input of row.querySelectorAll("input")) input.value = "";
    for (const select of row.querySelectorAll("select")) select.selectedIndex = 0;
  };

  add.hidden = false;
  for (const button of body.querySelectorAll("button.agenda-remove")) button.hidden = false;
  add.addEventListener("click", () => {
    const row = body.rows[body.rows.length - 1].cloneNode(true);
    clear(row);
    body.append(row);
    renumber();
    row.querySelector("input").focus();
  });
  body.addEventListener("click", (event) => {
    const button = event.target.closest("button.agenda-remove");
    if (!button) return;
    const row = button.closest("tr");
    if (body.rows.length > 1) row.remove();
    else clear(row);
    renumber();
  });
  renumber();
}
