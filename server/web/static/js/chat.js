// One answer on the page: its recalled memories, its tool calls, its text as it streams, how it ended, its usage.
import { asSession, json, plainWords } from "/web/js/api.js";
import { h } from "/web/js/dom.js";
import { addCopyButtons, renderMarkdown } from "/web/js/markdown.js";

const RUN_ERRORS = {
  "model-stream-failed": "The model stopped answering part-way. Send the message again.",
  "model-unavailable": "The model is unavailable right now. Try again shortly.",
  "model-deadline": "The model took too long to answer. Try again.",
  "worker-lost": "The server that was answering stopped. Send the message again.",
  "rolled-back": "This answer was replaced by a newer message.",
  "database-unavailable": "The server could not save this answer (its database is unavailable). Try again shortly.",
};

/** What a run's error event means, in plain words. */
export const runErrorWords = (error) => RUN_ERRORS[error.type] || `The agent could not answer: ${error.detail}.`;

export function userMessage(text) {
  return h("article", { class: "msg user", "aria-label": "You" }, h("p", { class: "plain", text }));
}

const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

export class Answer {
  constructor(sessionId, runId, { streaming = true } = {}) {
    this.sessionId = sessionId;
    this.runId = runId;
    this.text = "";
    this.frame = 0;
    this.pendingTools = [];
    this.memories = h("div", { class: "memories" });
    this.tools = h("div", { class: "tools" });
    this.body = h("div", { class: "markdown" });
    this.note = h("p", { class: "note" });
    this.el = h(
      "article",
      { class: "msg assistant", "aria-label": "Agent", "data-status": streaming ? "streaming" : "done", "aria-busy": streaming ? "true" : "false" },
      this.memories,
      this.tools,
      this.body,
      this.note,
    );
    if (!streaming) this.addUsage();
  }

  /** One event of the run's stream. */
  event(kind, data) {
    if (kind === "token") this.token(data.content);
    else if (kind === "memory") this.showMemories(data.memories);
    else if (kind === "tool") this.tool(data);
    else if (kind === "interrupt") this.question(data.question);
    else if (kind === "done") this.finish("done");
    else if (kind === "error")
      data.error.type === "cancelled" ? this.finish("stopped", "Stopped.") : this.finish("error", runErrorWords(data.error));
  }

  token(content) {
    this.text += content;
    // One render per frame whatever the token rate, and only of this answer.
    this.frame ||= requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    this.body.innerHTML = renderMarkdown(this.text);
  }

  showMemories(memories) {
    if (!memories?.length) return;
    const label = memories.length === 1 ? "Recalled 1 memory" : `Recalled ${memories.length} memories`;
    this.memories.replaceChildren(
      h("details", { class: "memory-recall" }, h("summary", { text: label }), h("ul", {}, memories.map((text) => h("li", { text })))),
    );
  }

  tool(data) {
    if (data.status === "started" || !this.pendingTools.length) {
      const summary = h("summary", {}, h("span", { class: "tool-name", text: data.name }), h("span", { class: "tool-status", text: " running…" }));
      const details = h(
        "details",
        { class: "tool", "data-tool": data.name },
        summary,
        h("pre", { class: "tool-args", text: JSON.stringify(data.arguments ?? {}, null, 2) }),
      );
      this.tools.append(details);
      this.pendingTools.push(details);
      if (data.status === "started") return;
    }
    const index = this.pendingTools.findIndex((item) => item.dataset.tool === data.name);
    const details = this.pendingTools.splice(index < 0 ? 0 : index, 1)[0];
    details.querySelector(".tool-status").textContent = data.status === "error" ? " failed" : " done";
    details.dataset.status = data.status;
    if (data.result != null) details.append(h("pre", { class: "tool-result", text: String(data.result) }));
  }

  question(text) {
    this.el.append(h("p", { class: "question" }, h("strong", { text: "The agent asks: " }), text));
    this.el.dataset.asking = "true";
  }

  finish(status, note = "") {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.render();
    addCopyButtons(this.body);
    for (const details of this.pendingTools) details.querySelector(".tool-status").textContent = " not finished";
    this.pendingTools = [];
    this.el.dataset.status = status;
    this.el.setAttribute("aria-busy", "false");
    this.note.textContent = note;
    this.note.className = status === "error" ? "note error" : "note";
    if (status !== "error") this.addUsage();
  }

  connection(state) {
    if (this.el.dataset.status !== "streaming") return;
    this.note.textContent = state === "reconnecting" ? "Connection lost; reconnecting…" : "";
  }

  /** Usage on demand: fetched from the run when the user opens it. */
  addUsage() {
    if (!this.runId || this.el.querySelector(".usage")) return;
    const list = h("dl", {});
    const details = h("details", { class: "usage" }, h("summary", { text: "Usage" }), list);
    details.addEventListener("toggle", async () => {
      if (!details.open || list.childElementCount) return;
      try {
        const run = await json(asSession(this.sessionId, `/api/v1/chatbot/runs/${this.runId}`));
        const usage = run.usage || {};
        const rows = [
          ["Tokens in", usage.input_tokens ?? "–"],
          ["Tokens out", usage.output_tokens ?? "–"],
          ["Cost", usage.cost_usd != null ? `$${Number(usage.cost_usd).toFixed(6)}` : "–"],
          ["Latency", run.finished_at && run.started_at ? seconds(Date.parse(run.finished_at) - Date.parse(run.started_at)) : "–"],
          ["Model", usage.model || "–"],
        ];
        list.replaceChildren(...rows.flatMap(([name, value]) => [h("dt", { text: name }), h("dd", { text: String(value) })]));
      } catch (error) {
        list.replaceChildren(h("dd", { text: plainWords(error) }));
      }
    });
    this.el.append(details);
  }
}

/** The session's history as the page shows it: each turn's question, tool calls and answer. */
export function renderHistory(sessionId, messages) {
  const nodes = [];
  const answers = [];
  let answer = null;
  let runId = null;
  for (const message of messages) {
    if (message.role === "user") {
      answer = null;
      runId = message.id;
      nodes.push(userMessage(message.content));
      continue;
    }
    if (!answer) {
      answer = new Answer(sessionId, runId, { streaming: false });
      answers.push(answer);
      nodes.push(answer.el);
    }
    if (message.role === "assistant") {
      for (const call of message.tool_calls || []) answer.tool({ name: call.name, arguments: call.arguments, status: "started" });
      if (message.content) answer.text += (answer.text ? "\n\n" : "") + message.content;
      if (message.status === "interrupted") answer.note.textContent = "Stopped.";
    } else if (message.role === "tool") {
      answer.tool({ name: message.name, status: message.status === "error" ? "error" : "ok", result: message.content });
    }
  }
  for (const item of answers) {
    item.render();
    addCopyButtons(item.body);
    item.pendingTools = [];
  }
  return nodes;
}
