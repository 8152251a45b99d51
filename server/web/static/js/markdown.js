// The model's answers as Markdown, made safe twice: raw HTML in the Markdown is shown as text (marked never emits
// it), and what marked emits goes through DOMPurify before it reaches the page. Images are shown as links: the page
// loads nothing from elsewhere (its CSP would refuse it anyway).
import { Marked } from "/web/vendor/marked.esm.js";
import DOMPurify from "/web/vendor/purify.es.mjs";

const escape = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html: ({ text }) => escape(text),
    image: ({ href, text }) => `<a href="${escape(href || "")}">${escape(text || href || "image")}</a>`,
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

const PURIFY = {
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "iframe", "video", "audio", "source"],
  FORBID_ATTR: ["style", "class", "id"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

/** Sanitized HTML of a Markdown answer, for an element's innerHTML. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}

/** A copy button on every code block of ``root`` that has none yet. */
export function addCopyButtons(root) {
  for (const pre of root.querySelectorAll("pre")) {
    if (pre.previousElementSibling?.classList.contains("copy")) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(pre.textContent);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy"), 1500);
    });
    pre.before(button);
  }
}
