// Building the page's elements. Text always goes in as text: nothing from the server or the model becomes markup
// here (Markdown answers go through markdown.js's sanitizer).

/** An element with attributes (on* never) and children (strings become text nodes). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child != null) element.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return element;
}

export const $ = (id) => document.getElementById(id);

/** Resolves true when the user confirms ``text`` in the confirmation dialog. */
export function confirmDialog(text, action = "Confirm") {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "cancel";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

/** Resolves with the new text the user typed in the rename dialog, or null. */
export function renameDialog(current) {
  const dialog = $("rename-dialog");
  const input = $("rename-input");
  input.value = current;
  dialog.returnValue = "cancel";
  dialog.showModal();
  input.select();
  return new Promise((resolve) =>
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null), {
      once: true,
    }),
  );
}
