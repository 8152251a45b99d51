// The API keys screen: the user's keys (by prefix, never whole), a form to create one, the new key shown once with a
// Copy button, and revoking (confirmed).
import * as api from "/web/js/api.js";
import { $, confirmDialog, h } from "/web/js/dom.js";

const PATH = "/api/v1/auth/api-keys";
// A field the server refused (422): its input, to put the focus there, its label, and its rule in words, for when the
// server's own message is a validator's ("Expected `str` matching regex ...") rather than a sentence.
const FIELDS = {
  name: {
    input: "key-name",
    label: "Name",
    rule: "it needs at least one visible character, not only spaces, and at most 100 characters",
  },
  scopes: { input: null, label: "What the key may do", rule: "choose chat, memories or both" },
  expires_in_days: {
    input: "key-expiry",
    label: "Expires after",
    rule: "a number of days above 0 and at most 3650, or empty for a key that never expires",
  },
};
const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

let wired = false;

const time = (iso) => h("time", { datetime: iso, text: when.format(new Date(iso)) });
const fact = (term, value) => [h("dt", { text: term }), h("dd", {}, value)];

function keyItem(key) {
  const label = `${key.name} (${key.prefix}…)`;
  const revoke = h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${label}`, text: "Revoke" });
  revoke.addEventListener("click", () => revokeKey(key, label));
  const expired = key.expires_at && new Date(key.expires_at) <= new Date();
  return h(
    "li",
    { "data-key": key.id },
    h(
      "div",
      { class: "key-info" },
      h("p", { class: "key-title" }, h("strong", { text: key.name }), " ", h("code", { class: "key-prefix", text: `${key.prefix}…` })),
      h(
        "dl",
        { class: "key-facts" },
        fact("Scopes", key.scopes.join(", ")),
        fact("Created", time(key.created_at)),
        fact("Last used", key.last_used_at ? time(key.last_used_at) : "never"),
        fact(expired ? "Expired" : "Expires", key.expires_at ? time(key.expires_at) : "never"),
      ),
    ),
    revoke,
  );
}

async function load() {
  const status = $("keys-status");
  status.textContent = "Loading…";
  try {
    const { items } = await api.json(api.asUser(PATH));
    $("keys-list").replaceChildren(...items.map(keyItem));
    status.textContent = items.length ? `${items.length} ${items.length === 1 ? "key" : "keys"}.` : "You have no API keys.";
  } catch (error) {
    $("keys-list").replaceChildren();
    status.textContent = api.plainWords(error);
  }
}

function showError(message, inputId = null) {
  $("key-error").textContent = message;
  for (const id of ["key-name", "key-expiry"]) {
    if (id === inputId) $(id).setAttribute("aria-invalid", "true");
    else $(id).removeAttribute("aria-invalid");
  }
  if (inputId) $(inputId).focus();
}

/** The request body from the form, or null (with the reason shown) when it cannot be sent as it is. */
function readForm() {
  const name = $("key-name").value;
  const scopes = [...$("key-create").querySelectorAll("input[name=scope]:checked")].map((box) => box.value);
  const expiry = $("key-expiry");
  // Only an empty name is stopped here: what counts as visible text is the server's to judge, and it says why.
  if (!name) {
    showError("Enter a name for the key.", "key-name");
    return null;
  }
  if (!scopes.length) {
    showError("Choose at least one thing the key may do.");
    $("key-create").querySelector("input[name=scope]").focus();
    return null;
  }
  const body = { name, scopes };
  if (expiry.validity.badInput) {
    showError("Expires after: a number of days, or empty for a key that never expires.", "key-expiry");
    return null;
  }
  if (expiry.value) body.expires_in_days = Number(expiry.value); // its range is the server's to judge
  return body;
}

const isSentence = (message) => Boolean(message) && !message.includes("`") && !/^Expected /.test(message);
const sentence = (text) => text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".");

/** What the server refused, field by field, in words; anything else as the rest of the page words it. */
function explain(error) {
  if (!(error instanceof api.ApiError) || error.status !== 422 || !error.errors.length) return api.plainWords(error);
  return error.errors
    .map(({ field, message }) => {
      const known = FIELDS[field];
      const why = isSentence(message) ? message : known?.rule || message;
      return sentence(`${known?.label || field}: ${why}`);
    })
    .join(" ");
}

async function createKey(event) {
  event.preventDefault();
  showError("");
  const body = readForm();
  if (!body) return;
  const submit = $("key-submit");
  submit.disabled = true;
  try {
    const created = await api.json(api.asUser(PATH, { method: "POST", body }));
    $("key-create").reset();
    showCreated(created);
    await load();
  } catch (error) {
    const input = error instanceof api.ApiError ? error.errors.map((e) => FIELDS[e.field]?.input).find(Boolean) : null;
    showError(explain(error), input || null);
  } finally {
    submit.disabled = false;
  }
}

/** The new key, this once: in a read-only field, selected, with the note that it will not be shown again. */
function showCreated(created) {
  $("key-create").hidden = true;
  $("key-created").hidden = false;
  $("key-created-title").textContent = `Your new key “${created.name}”`;
  $("key-copy-status").textContent = "";
  const field = $("key-value");
  field.value = created.key;
  field.focus();
  field.select();
}

/** Forget the shown key: it is in the page for as long as the user needs to copy it, and no longer. */
function hideCreated() {
  $("key-value").value = "";
  $("key-copy-status").textContent = "";
  $("key-created").hidden = true;
  $("key-create").hidden = false;
}

async function copyKey() {
  const field = $("key-value");
  try {
    await navigator.clipboard.writeText(field.value);
    $("key-copy-status").textContent = "Copied.";
  } catch {
    field.focus();
    field.select();
    $("key-copy-status").textContent = "The page may not copy here: the key is selected, copy it with the keyboard.";
  }
}

async function revokeKey(key, label) {
  const question = `Revoke the key ${label}? Programs using it stop working at once. This cannot be undone.`;
  if (!(await confirmDialog(question, "Revoke"))) return;
  try {
    await api.json(api.asUser(`${PATH}/${key.id}`, { method: "DELETE" }));
    await load();
    $("keys-status").textContent = `Revoked ${label}. ${$("keys-status").textContent}`;
  } catch (error) {
    $("keys-status").textContent = api.plainWords(error);
  }
  $("keys-heading").focus(); // the button that had the focus is gone with its row
}

export function openKeys() {
  if (!wired) {
    wired = true;
    $("keys-close").addEventListener("click", () => $("keys-dialog").close());
    $("keys-dialog").addEventListener("close", hideCreated);
    $("key-create").addEventListener("submit", createKey);
    $("key-copy").addEventListener("click", copyKey);
    $("key-done").addEventListener("click", () => {
      hideCreated();
      $("key-name").focus();
    });
  }
  hideCreated();
  $("key-create").reset();
  showError("");
  $("keys-dialog").showModal();
  load();
}
