// The memory panel: what the agent remembers about the user, searchable, forgettable one by one or all at once.
import * as api from "/web/js/api.js";
import { $, confirmDialog, h } from "/web/js/dom.js";

let wired = false;

async function load(query = "") {
  const status = $("memory-status");
  status.textContent = "Loading…";
  try {
    const path = `/api/v1/memories?limit=100${query ? `&query=${encodeURIComponent(query)}` : ""}`;
    const { memories } = await api.json(api.asUser(path));
    $("memory-list").replaceChildren(
      ...memories.map((memory) => {
        const forget = h("button", { type: "button", class: "danger", "aria-label": `Forget: ${memory.memory}`, text: "Forget" });
        forget.addEventListener("click", async () => {
          try {
            await api.json(api.asUser(`/api/v1/memories/${memory.id}`, { method: "DELETE" }));
            await load($("memory-query").value.trim());
          } catch (error) {
            status.textContent = api.plainWords(error);
          }
        });
        return h("li", { "data-memory": memory.id }, h("span", { text: memory.memory }), forget);
      }),
    );
    status.textContent = memories.length
      ? `${memories.length} ${memories.length === 1 ? "memory" : "memories"}${query ? " found" : ""}.`
      : query ? "Nothing found." : "The agent remembers nothing about you yet.";
    $("memory-forget-all").hidden = !memories.length || Boolean(query);
  } catch (error) {
    $("memory-list").replaceChildren();
    status.textContent = api.plainWords(error);
  }
}

async function forgetAll() {
  if (!(await confirmDialog("Forget everything the agent remembers about you? This cannot be undone.", "Forget everything"))) return;
  try {
    const { deleted } = await api.json(api.asUser("/api/v1/memories/", { method: "DELETE" }));
    await load();
    $("memory-status").textContent = `Forgot ${deleted} ${deleted === 1 ? "memory" : "memories"}.`;
  } catch (error) {
    $("memory-status").textContent = api.plainWords(error);
  }
}

export function openMemory() {
  if (!wired) {
    wired = true;
    $("memory-close").addEventListener("click", () => $("memory-dialog").close());
    $("memory-search").addEventListener("submit", (event) => {
      event.preventDefault();
      load($("memory-query").value.trim());
    });
    $("memory-forget-all").addEventListener("click", forgetAll);
  }
  $("memory-query").value = "";
  $("memory-dialog").showModal();
  load();
}
