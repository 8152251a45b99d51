// The conversation on the page: each question (editable, with its versions), and each answer (its recalled memories,
// its tool calls, its text as it streams, the tool calls it waits to have approved, how it ended, its usage, another
// answer on demand).
//
// ``controls`` are the page's actions on a conversation, given by main.js: edit(id, text) and regenerate(id) resolve
// true once the new run is accepted; switchBranch(id, label) shows another version. ``answerApproval(body)`` sends
// the decisions on tool calls awaiting approval (see approvals.js).
import { asSession, json, plainWords } from "/web/js/api.js";
import { ApprovalCard, approvalWords } from "/web/js/approvals.js";
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

/** A question; with its run's ``id`` and ``controls``, an Edit button and, where it has versions, arrows between them. */
export function userMessage(text, { id = null, branch = null, controls = null } = {}) {
  const article = h("article", { class: "msg user", "aria-label": "You", "data-message": id }, h("p", { class: "plain", text }));
  if (!id || !controls) return article;
  const edit = h("button", { type: "button", class: "small", text: "Edit" });
  edit.addEventListener("click", () => openEditor(article, edit, id, text, controls));
  article.append(h("div", { class: "msg-actions" }, edit));
  showVersions(article, branch, controls);
  return article;
}

/** The ‹ 2/3 › control of a question with versions (``branch`` as GET /messages gives it), put in or replaced. */
export function showVersions(article, branch, controls) {
  article.querySelector(".versions")?.remove();
  if (!branch || branch.count < 2) return;
  const { index, count, siblings } = branch;
  const arrow = (label, text, target) => {
    const button = h("button", { type: "button", class: "small arrow", "aria-label": label, text, disabled: !target });
    button.addEventListener("click", () => controls.switchBranch(target, label));
    return button;
  };
  article
    .querySelector(".msg-actions")
    .prepend(
      h(
        "div",
        { class: "versions", role: "group", "aria-label": "Versions of this message" },
        arrow("Previous version", "‹", siblings[index - 2]),
        h("span", { class: "version-count", text: `${index}/${count}` }),
        arrow("Next version", "›", siblings[index]),
      ),
    );
}

/** The question's text in a box to edit in place: Save (or Enter) asks again with it, Cancel (or Esc) leaves it. */
function openEditor(article, editButton, id, text, controls) {
  if (article.dataset.editing) return;
  const box = h("textarea", { class: "editor-input", rows: Math.min(8, text.split("\n").length + 1), "aria-label": "Edit your message" });
  box.value = text;
  const problem = h("p", { class: "error", role: "alert" });
  const save = h("button", { type: "submit", class: "primary small", text: "Save" });
  const cancel = h("button", { type: "button", class: "small", text: "Cancel" });
  const form = h("form", { class: "editor" }, box, problem, h("div", { class: "row end" }, cancel, save));
  const close = () => {
    form.remove();
    delete article.dataset.editing;
    editButton.focus();
  };
  cancel.addEventListener("click", close);
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Esc here leaves the editor; it does not stop an answer
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const edited = box.value.trim();
    if (!edited) {
      problem.textContent = "A message cannot be empty: type one, or Cancel.";
      return;
    }
    problem.textContent = "";
    save.disabled = true;
    // Accepted: the question and what followed it make way for the new version. Refused: the editor stays, to retry.
    if (!(await controls.edit(id, edited))) save.disabled = false;
  });
  article.dataset.editing = "true";
  article.append(form);
  box.focus();
  box.setSelectionRange(box.value.length, box.value.length);
}

const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

export class Answer {
  constructor(sessionId, runId, { streaming = true, controls = null, answerApproval = null } = {}) {
    this.sessionId = sessionId;
    this.runId = runId;
    this.controls = controls;
    this.answerApproval = answerApproval;
    this.text = "";
    this.frame = 0;
    this.pendingTools = [];
    this.memories = h("div", { class: "memories" });
    this.tools = h("div", { class: "tools" });
    this.body = h("div", { class: "markdown" });
    this.approvals = h("div", { class: "approvals" });
    this.note = h("p", { class: "note" });
    this.el = h(
      "article",
      { class: "msg assistant", "aria-label": "Agent", "data-status": streaming ? "streaming" : "done", "aria-busy": streaming ? "true" : "false" },
      this.memories,
      this.tools,
      this.body,
      this.approvals,
      this.note,
    );
    if (!streaming) this.addFooter();
  }

  /** One event of the run's stream. */
  event(kind, data) {
    if (kind === "token") this.token(data.content);
    else if (kind === "memory") this.showMemories(data.memories);
    else if (kind === "tool") this.tool(data);
    else if (kind === "interrupt") this.question(data.question);
    else if (kind === "approval") this.approval(data.calls);
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
    // A call without a started event (one the user rejected: it never ran) gets a block of its own.
    if (data.status === "started" || !this.pendingTools.some((item) => item.dataset.tool === data.name)) {
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
    const details = this.pendingTools.splice(index, 1)[0];
    const rejected = data.approval?.decision === "rejected";
    details.querySelector(".tool-status").textContent = rejected ? " not run" : data.status === "error" ? " failed" : " done";
    details.dataset.status = data.status;
    if (data.approval) {
      details.dataset.approval = data.approval.decision;
      details.querySelector("summary").append(h("span", { class: "tool-approval", text: ` · ${approvalWords(data.approval)}` }));
      if (data.approval.arguments_asked)
        details.append(h("p", { class: "note", text: `The agent asked for: ${JSON.stringify(data.approval.arguments_asked)}` }));
    }
    if (data.result != null) details.append(h("pre", { class: "tool-result", text: String(data.result) }));
  }

  /** Tool calls waiting for the user's decision: their card, below what the answer says so far. */
  approval(calls) {
    if (!calls?.length) return;
    const send = this.answerApproval || (async () => new Error("this answer cannot send decisions"));
    this.approvals.replaceChildren(new ApprovalCard(calls, send).el);
    this.el.dataset.awaiting = "approval";
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
    this.addActions();
  }

  addFooter() {
    this.addUsage();
    this.addActions();
  }

  /** Regenerate: another answer to the same question (this one is kept as a version of it). */
  addActions() {
    if (!this.runId || !this.controls || this.el.querySelector(".msg-actions")) return;
    const again = h("button", { type: "button", class: "small", text: "Regenerate" });
    again.addEventListener("click", async () => {
      again.disabled = true;
      if (!(await this.controls.regenerate(this.runId))) again.disabled = false;
    });
    this.el.append(h("div", { class: "msg-actions" }, again));
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

/** The session's history as the page shows it: each turn's question (with its versions), tool calls and answer; and
 * the card of the tool calls awaiting approval (``approval``: those calls) in the last answer. */
export function renderHistory(sessionId, messages, controls = null, { approval = null, answerApproval = null } = {}) {
  const nodes = [];
  const answers = [];
  let answer = null;
  let runId = null;
  for (const message of messages) {
    if (message.role === "user") {
      answer = null;
      runId = message.id;
      nodes.push(userMessage(message.content, { id: message.id, branch: message.branch, controls }));
      continue;
    }
    if (!answer) {
      answer = new Answer(sessionId, runId, { streaming: false, controls, answerApproval });
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
  if (approval?.length) {
    const last = answers.at(-1);
    // The calls without a result are the ones waiting: the card shows them, as it does while the answer streams.
    for (const details of last?.pendingTools || []) details.remove();
    last?.approval(approval);
  }
  for (const item of answers) {
    item.render();
    addCopyButtons(item.body);
    item.pendingTools = [];
  }
  return nodes;
}
