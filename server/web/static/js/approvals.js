// Tool calls that wait for the user's yes: a card in the answer that paused for them, with a decision per call
// (Approve; Edit, which runs it with arguments typed as JSON; Reject, with an optional reason the model reads). The
// decisions go to the server together, once every call has one; the resumed answer then streams below the card.
//
// ``send(body)`` is the page's: it posts a body of POST /api/v1/chatbot/approval and resolves null once the resumed
// turn is accepted, or with the error to show in the card.
import { plainWords } from "/web/js/api.js";
import { h } from "/web/js/dom.js";

const pretty = (value) => JSON.stringify(value ?? {}, null, 2);
const sentence = (text) => text.charAt(0).toUpperCase() + text.slice(1) + (/[.!?]$/.test(text) ? "" : ".");

let serial = 0; // ids that tie labels to their fields
const open = new Set(); // cards on the page still waiting for decisions

/** How a tool event's ``approval`` reads on the tool's block: "approved", "edited", "rejected: reason". */
export function approvalWords(approval) {
  if (approval.decision === "rejected") return approval.reason ? `rejected: ${approval.reason}` : "rejected";
  return approval.decision === "edited" ? "edited" : "approved";
}

/** Every card still waiting is answered otherwise (a message sent instead, a turn resumed elsewhere): ``words`` say
 * how, and its buttons go. */
export function settleOpenCards(words) {
  for (const card of open) card.finish(words);
}

/** A decision as the card shows it once taken. */
function decisionWords({ decision, arguments: args, reason }) {
  if (decision === "approve") return "Approved.";
  if (decision === "edit") return `Edited: runs with ${JSON.stringify(args)}`;
  return reason ? `Rejected: ${reason}` : "Rejected.";
}

/** Each call's name in the card's words: its tool, numbered where the same tool is called more than once. */
function labelsOf(calls) {
  const counts = new Map();
  for (const call of calls) counts.set(call.tool, (counts.get(call.tool) || 0) + 1);
  const seen = new Map();
  return calls.map((call) => {
    const nth = (seen.get(call.tool) || 0) + 1;
    seen.set(call.tool, nth);
    return counts.get(call.tool) > 1 ? `${call.tool} #${nth}` : call.tool;
  });
}

export class ApprovalCard {
  constructor(calls, send) {
    this.send = send;
    this.decisions = new Map();
    const labels = labelsOf(calls);
    this.views = calls.map((call, index) => this.callView(call, labels[index]));
    this.status = h("p", { class: "approval-status", role: "status" });
    this.problem = h("p", { class: "error", role: "alert" });
    this.retry = h("button", { type: "button", class: "small", text: "Send the decisions again", hidden: true });
    this.retry.addEventListener("click", () => this.submit());
    const title = calls.length === 1 ? "The agent asks to run a tool" : `The agent asks to run ${calls.length} tools`;
    this.el = h(
      "fieldset",
      { class: "approval", "data-state": "pending" },
      h("legend", { text: title }),
      this.views.map((view) => view.el),
      this.status,
      this.problem,
      this.retry,
    );
    open.add(this);
    this.update();
  }

  callView(call, label) {
    const id = `approval-${++serial}`;
    const button = (text, className, expands = false) =>
      h("button", { type: "button", class: className, text, "aria-expanded": expands ? "false" : null });
    const view = {
      call,
      label,
      id,
      approve: button("Approve", "small primary"),
      edit: button("Edit", "small", true),
      reject: button("Reject", "small danger", true),
      panel: h("div", { class: "approval-panel" }),
      decision: h("p", { class: "approval-decision" }),
    };
    view.actions = h("div", { class: "row approval-actions" }, view.approve, view.edit, view.reject);
    view.el = h(
      "div",
      { class: "approval-call", role: "group", "aria-labelledby": `${id}-tool`, "data-call": call.id, "data-tool": call.tool },
      h(
        "p",
        { class: "approval-tool", id: `${id}-tool` },
        h("span", { class: "tool-name", text: label }),
        " ",
        h("span", { class: "approval-server", text: call.server ? `MCP server ${call.server}` : "built-in" }),
      ),
      call.description ? h("p", { class: "note approval-description", text: call.description }) : null,
      h("pre", { class: "approval-args", text: pretty(call.arguments) }),
      view.actions,
      view.panel,
      view.decision,
    );
    view.approve.addEventListener("click", () => this.decide(view, { decision: "approve" }));
    view.edit.addEventListener("click", () => (view.panel.dataset.open === "edit" ? this.closePanel(view, view.edit) : this.openEdit(view)));
    view.reject.addEventListener("click", () => (view.panel.dataset.open === "reject" ? this.closePanel(view, view.reject) : this.openReject(view)));
    return view;
  }

  /** Close the call's Edit or Reject form, the focus going to ``focus`` when given. */
  closePanel(view, focus = null) {
    view.panel.replaceChildren();
    delete view.panel.dataset.open;
    view.edit.setAttribute("aria-expanded", "false");
    view.reject.setAttribute("aria-expanded", "false");
    focus?.focus();
  }

  /** A form below the call's buttons (Esc or Cancel closes it); its first field gets the focus. */
  openPanel(view, kind, opener, form, field) {
    this.closePanel(view);
    const cancel = h("button", { type: "button", class: "small", text: "Cancel" });
    cancel.addEventListener("click", () => this.closePanel(view, opener));
    form.querySelector(".row").prepend(cancel);
    form.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      event.preventDefault();
      event.stopPropagation(); // Esc here closes the form; it does not stop an answer
      this.closePanel(view, opener);
    });
    view.panel.dataset.open = kind;
    view.panel.append(form);
    opener.setAttribute("aria-expanded", "true");
    field.focus();
  }

  /** Edit: the arguments as JSON in a box; the call runs with what it holds once it parses as a JSON object. */
  openEdit(view, { value = null, problem = "" } = {}) {
    const boxId = `${view.id}-args`;
    const box = h("textarea", {
      id: boxId,
      class: "approval-input",
      rows: Math.min(10, pretty(view.call.arguments).split("\n").length + 1),
      spellcheck: "false",
      "aria-describedby": `${boxId}-error`,
      "aria-invalid": problem ? "true" : null,
    });
    box.value = value ?? pretty(view.call.arguments);
    const error = h("p", { class: "error", role: "alert", id: `${boxId}-error`, text: problem });
    const form = h(
      "form",
      { class: "approval-form" },
      h("label", { for: boxId, text: `Arguments of ${view.label} (JSON)` }),
      box,
      error,
      h("div", { class: "row end" }, h("button", { type: "submit", class: "small primary", text: "Run with these arguments" })),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      let args;
      try {
        args = JSON.parse(box.value);
      } catch (parseError) {
        args = parseError;
      }
      const wrong =
        args instanceof Error
          ? `This is not valid JSON: ${args.message}`
          : args === null || typeof args !== "object" || Array.isArray(args)
            ? 'The arguments must be a JSON object, such as {"name": "value"}.'
            : "";
      error.textContent = wrong;
      box.setAttribute("aria-invalid", wrong ? "true" : "false");
      if (wrong) box.focus();
      else this.decide(view, { decision: "edit", arguments: args });
    });
    this.openPanel(view, "edit", view.edit, form, box);
  }

  /** Reject: an optional reason (the model reads it) and a button that confirms. */
  openReject(view) {
    const fieldId = `${view.id}-reason`;
    const reason = h("input", { id: fieldId, class: "approval-reason", maxlength: 2000, autocomplete: "off" });
    const form = h(
      "form",
      { class: "approval-form" },
      h("label", { for: fieldId, text: `Why not? (optional: the agent reads it)` }),
      reason,
      h("div", { class: "row end" }, h("button", { type: "submit", class: "small danger", text: "Reject the call" })),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.decide(view, { decision: "reject", reason: reason.value.trim() || undefined });
    });
    this.openPanel(view, "reject", view.reject, form, reason);
  }

  /** A call's decision is taken: shown in words (with Change until they are sent); the last one sends them all. */
  decide(view, decision) {
    this.decisions.set(view.call.id, decision);
    this.closePanel(view);
    view.actions.hidden = true;
    view.el.dataset.decision = decision.decision;
    const change = h("button", { type: "button", class: "small approval-change", text: "Change" });
    change.addEventListener("click", () => {
      this.undecide(view);
      view.approve.focus();
    });
    view.decision.replaceChildren(h("span", { text: decisionWords(decision) }), " ", change);
    this.update();
    const next = this.views.find((other) => !this.decisions.has(other.call.id));
    if (next) next.approve.focus();
    else this.submit();
  }

  undecide(view) {
    this.decisions.delete(view.call.id);
    delete view.el.dataset.decision;
    view.decision.replaceChildren();
    view.actions.hidden = false;
    this.update();
  }

  /** Which calls still wait for a decision, where there are several. */
  update() {
    if (this.views.length < 2) return;
    const left = this.views.filter((view) => !this.decisions.has(view.call.id)).map((view) => view.label);
    this.status.textContent = left.length
      ? `Still to decide: ${left.join(", ")}. The decisions are sent together once every call has one.`
      : "";
  }

  async submit() {
    const decisions = this.views.map((view) => ({ id: view.call.id, ...this.decisions.get(view.call.id) }));
    this.el.disabled = true; // every button and field of the card, until the server answers
    this.el.dataset.state = "sending";
    this.el.setAttribute("aria-busy", "true");
    this.retry.hidden = true;
    this.problem.textContent = "";
    this.status.textContent = "Sending your decisions…";
    const error = await this.send({ decisions });
    this.el.disabled = false;
    this.el.removeAttribute("aria-busy");
    if (!error) {
      this.finish("Sent: the answer goes on below.");
      return;
    }
    this.el.dataset.state = "pending";
    this.status.textContent = "";
    // Arguments the tool's schema refuses: the call's editor again, the server's reason under it, to fix and resend.
    const refused = error.status === 422 ? (error.errors || []).map((item) => [/^decisions\[(\d+)\]/.exec(item.field || ""), item]) : [];
    const fixable = refused.filter(([match]) => match && this.views[Number(match[1])]);
    if (!fixable.length) {
      this.problem.textContent = plainWords(error);
      this.retry.hidden = false;
      this.update();
      return;
    }
    for (const [match, item] of fixable) {
      const view = this.views[Number(match[1])];
      const decided = this.decisions.get(view.call.id);
      this.undecide(view);
      const problem = sentence(item.message || error.detail);
      if (decided?.decision === "edit") this.openEdit(view, { value: pretty(decided.arguments), problem });
      else view.decision.textContent = problem;
    }
    this.update();
  }

  /** Decisions sent (or the turn answered otherwise): the decisions stay, the controls go. */
  finish(words) {
    open.delete(this);
    this.el.dataset.state = "answered";
    for (const view of this.views) {
      this.closePanel(view);
      view.actions.remove();
      view.decision.querySelector(".approval-change")?.remove();
    }
    this.retry.remove();
    this.problem.textContent = "";
    this.status.textContent = words;
  }
}
