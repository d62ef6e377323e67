// Translations: the page embeds the table of its language (from web/static/i18n/*.json,
// the same catalogue the server's templates use) in <script id="strings">.
const table = JSON.parse(document.getElementById("strings")?.textContent || "{}");

/** The text for `key` in the page's language (the key itself when missing). */
export function t(key) {
  return table[key] ?? key;
}

/** `t(key)` with `{name}` placeholders filled from `values` (as text, never HTML). */
export function tf(key, values) {
  return t(key).replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
}

/** Whether the catalogue has `key`. */
export function has(key) {
  return key in table;
}
