// WhatsApp's message formatting, rendered as HTML: *bold*, _italic_, ~strike~, `code`,
// ```code blocks```, and links. Text is escaped first; links and code are set aside before the
// markers are looked at, so an underscore in a URL or an id stays what it is.
"use strict";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// A marker opens after a start, a space or punctuation and closes before an end, a space or
// punctuation, with neither a space nor the marker again just inside it: WhatsApp's rule, so
// "2*3*4", snake_case and __init__.py stay plain.
function styled(marker, tag) {
  const m = marker === "*" ? "\\*" : marker;
  const pattern = new RegExp(
    `(^|[^\\p{L}\\p{N}${m}])${m}(?![\\s${m}])([^\\n]*?[^\\s${m}])${m}(?![\\p{L}\\p{N}${m}])`, "gu");
  return (html) => html.replace(pattern, `$1<${tag}>$2</${tag}>`);
}
const BOLD = styled("*", "strong");
const ITALIC = styled("_", "em");
const STRIKE = styled("~", "del");

function formatWhatsApp(text) {
  const kept = [];
  const keep = (html) => `\u0000${kept.push(html) - 1}\u0000`;
  let html = text.replace(/```([\s\S]*?)```/g, (_, code) => keep(`<pre><code>${escapeHtml(code.replace(/^\n/, ""))}</code></pre>`));
  html = html.replace(/`([^`\n]+)`/g, (_, code) => keep(`<code>${escapeHtml(code)}</code>`));
  html = html.replace(/\bhttps?:\/\/[^\s<>"')\]]+[^\s<>"')\].,;:!?]/g, (url) =>
    keep(`<a href="${escapeHtml(url)}" target="_blank" rel="noopener">${escapeHtml(url)}</a>`));
  html = STRIKE(ITALIC(BOLD(escapeHtml(html))));
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => kept[Number(i)]);
}
