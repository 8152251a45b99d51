// The page: signing in, the chats in the sidebar, sending and following answers, editing and answering again with
// versions of a question, deciding on tool calls awaiting approval, what the user spent, the memory and API keys
// panels.
import * as api from "/web/js/api.js";
import { settleOpenCards } from "/web/js/approvals.js";
import { Answer, renderHistory, showVersions, userMessage } from "/web/js/chat.js";
import { $, confirmDialog, h, renameDialog } from "/web/js/dom.js";
import { openKeys } from "/web/js/keys.js";
import { openMemory } from "/web/js/memory.js";
import { refreshSpending } from "/web/js/spending.js";
import { followRun } from "/web/js/stream.js";

const LAST_SESSION = "agentctl.session"; // which chat was open: an id, not a secret
const ACTIVE = new Set(["queued", "running"]);
const PLACEHOLDERS = {
  none: "Message: Enter sends, Shift+Enter adds a line",
  question: "Answer the agent's question",
  approval: "A message rejects the tool calls above",
};
const state = {
  signingUp: false,
  sessions: [],
  sessionId: null,
  runId: null,
  follow: null,
  hiddenAt: 0,
  loading: null,
  awaiting: "none", // what the chat's last turn waits for: none, question (ask_human) or approval
};

// -- signing in -----------------------------------------------------------------------------------------------------

function show(view) {
  $("signin-view").hidden = view !== "signin";
  $("app-view").hidden = view !== "app";
  document.documentElement.dataset.view = view;
}

function setAuthMode(signingUp) {
  state.signingUp = signingUp;
  $("auth-title").textContent = signingUp ? "Create an account" : "Sign in";
  $("auth-submit").textContent = signingUp ? "Create account" : "Sign in";
  $("auth-switch").textContent = signingUp ? "Have an account? Sign in" : "New here? Create an account";
  $("password").autocomplete = signingUp ? "new-password" : "current-password";
  $("auth-error").textContent = "";
}

async function submitAuth(event) {
  event.preventDefault();
  const email = $("email").value.trim();
  const password = $("password").value;
  if (!email || !password) {
    $("auth-error").textContent = "Enter your email and a password.";
    return;
  }
  $("auth-submit").disabled = true;
  try {
    await (state.signingUp ? api.signUp(email, password) : api.signIn(email, password));
    $("password").value = "";
    await enterApp();
  } catch (error) {
    $("auth-error").textContent =
      error instanceof api.ApiError && error.status === 401 ? "Wrong email or password." : api.plainWords(error);
  } finally {
    $("auth-submit").disabled = false;
  }
}

async function signOut() {
  stopFollowing();
  await api.signOut().catch(() => {});
  state.sessions = [];
  state.sessionId = null;
  $("messages").replaceChildren();
  $("spending").hidden = true;
  $("spending-list").replaceChildren();
  setAuthMode(false);
  show("signin");
  $("email").focus();
}

// -- chats ----------------------------------------------------------------------------------------------------------

async function enterApp() {
  const user = api.currentUser();
  $("who").textContent = user ? `Signed in as ${user.email}` : "";
  show("app");
  refreshSpending();
  await loadSessions();
  const remembered = localStorage.getItem(LAST_SESSION);
  const chosen = state.sessions.find((s) => s.session_id === remembered) || state.sessions[0];
  await (chosen ? openSession(chosen.session_id) : newSession());
  $("input").focus();
}

async function loadSessions() {
  const page = await api.json(api.asUser("/api/v1/auth/sessions?limit=100"));
  state.sessions = page.items;
  renderSessions();
}

function renderSessions() {
  $("sessions").replaceChildren(
    ...state.sessions.map((session) => {
      const current = session.session_id === state.sessionId;
      const name = session.name || "Untitled chat";
      const open = h("button", { type: "button", class: "session-open", "aria-current": current ? "page" : false, text: name });
      open.addEventListener("click", () => {
        closeSidebar();
        openSession(session.session_id);
      });
      const rename = h("button", { type: "button", class: "icon", "aria-label": `Rename chat ${name}`, title: "Rename", text: "✎" });
      rename.addEventListener("click", () => renameSession(session));
      const remove = h("button", { type: "button", class: "icon", "aria-label": `Delete chat ${name}`, title: "Delete", text: "✕" });
      remove.addEventListener("click", () => deleteSession(session));
      return h("li", { "data-session": session.session_id }, open, rename, remove);
    }),
  );
}

async function newSession() {
  try {
    const created = await api.json(api.asUser("/api/v1/auth/session", { method: "POST" }));
    api.rememberSessionToken(created.session_id, created.token.access_token);
    await loadSessions();
    await openSession(created.session_id);
    closeSidebar();
    $("input").focus();
  } catch (error) {
    showError(error);
  }
}

async function renameSession(session) {
  const name = await renameDialog(session.name || "");
  if (!name) return;
  try {
    await api.json(api.asUser(`/api/v1/auth/session/${session.session_id}/name`, { method: "PATCH", body: { name } }));
    await loadSessions();
    if (session.session_id === state.sessionId) $("session-title").textContent = name;
  } catch (error) {
    showError(error);
  }
}

async function deleteSession(session) {
  if (!(await confirmDialog(`Delete the chat “${session.name || "Untitled chat"}” and its messages?`, "Delete"))) return;
  try {
    await api.json(api.asUser(`/api/v1/auth/session/${session.session_id}`, { method: "DELETE" }));
    await loadSessions();
    if (session.session_id === state.sessionId) {
      stopFollowing();
      state.sessionId = null;
      await (state.sessions[0] ? openSession(state.sessions[0].session_id) : newSession());
    }
  } catch (error) {
    showError(error);
  }
}

/** Show a chat: its history, and its answer in progress (rejoined from its first event: the page holds no copy). */
async function openSession(sessionId) {
  stopFollowing();
  state.sessionId = sessionId;
  localStorage.setItem(LAST_SESSION, sessionId);
  const session = state.sessions.find((s) => s.session_id === sessionId);
  $("session-title").textContent = session?.name || "Untitled chat";
  renderSessions();
  showError(null);
  setAwaiting("none");
  state.loading = loadSession(sessionId);
  await state.loading;
}

/** The chat's history and its running answer, if any: what the message list is replaced with. */
async function loadSession(sessionId) {
  try {
    // The newest run first, then the history: a run that ends in between is then in the history, and shown once.
    const [newest] = (await api.json(api.asSession(sessionId, "/api/v1/chatbot/runs?limit=1"))).items;
    let { messages, approval } = await api.json(api.asSession(sessionId, "/api/v1/chatbot/messages"));
    if (state.sessionId !== sessionId) return;
    const active = newest && ACTIVE.has(newest.status) ? newest : null;
    let cut = -1;
    if (active) {
      cut = messages.findIndex((m) => m.id === active.id);
      if (cut >= 0) messages = messages.slice(0, cut);
    }
    $("messages").replaceChildren(...renderHistory(sessionId, messages, controls, { approval: approval?.calls, answerApproval }));
    if (active) {
      // A run that resumes a turn paused for approval (the server says so): the decisions, no question of their own;
      // else perhaps a message sent instead. The card it answers may still be in the history until the calls have run.
      const decisions = cut < 0 && active.resumed;
      settleOpenCards("Answered: the answer goes on below.");
      startAnswer(active.id, decisions ? null : active.input, { reply: cut < 0 && (decisions || Boolean(approval)) });
    } else if (approval) setAwaiting("approval");
    else if (newest?.status === "awaiting_human") setAwaiting("question");
    scrollToEnd(true);
  } catch (error) {
    showError(error);
  }
}

// -- sending and following ------------------------------------------------------------------------------------------

/** What the next message answers: nothing ("none"), the agent's question, or tool calls awaiting approval (a message
 * rejects them, with itself as the reason). The input's placeholder says which. */
function setAwaiting(what) {
  state.awaiting = what;
  $("input").placeholder = PLACEHOLDERS[what];
}

function setRunning(running) {
  $("stop").hidden = !running;
  document.documentElement.dataset.running = running ? "true" : "false";
}

function stopFollowing() {
  state.follow?.abort();
  state.follow = null;
  state.runId = null;
  setRunning(false);
}

/** Follow a run's answer below its question. A reply to the agent's question continues a turn: it is no question of
 * its own to edit or answer again (the page offers that on the turn's question once reloaded). Decisions on tool
 * calls continue one too, with no question at all (``question`` null): the answer goes on below their card. */
function startAnswer(runId, question, { forked = false, reply = false } = {}) {
  const sessionId = state.sessionId;
  const turnControls = reply || question == null ? null : controls;
  const answer = new Answer(sessionId, runId, { controls: turnControls, answerApproval });
  const asked = question == null ? null : userMessage(question, { id: runId, controls: turnControls });
  $("messages").append(...(asked ? [asked] : []), answer.el);
  scrollToEnd(true);
  const controller = new AbortController();
  state.follow = controller;
  state.runId = runId;
  setRunning(true);
  followRun(sessionId, runId, {
    signal: controller.signal,
    onEvent(kind, data) {
      const stick = nearEnd();
      answer.event(kind, data);
      if (kind === "interrupt") setAwaiting("question");
      else if (kind === "approval") setAwaiting("approval");
      if (stick) scrollToEnd();
    },
    onConnection: (connection) => answer.connection(connection),
  })
    .catch((error) => answer.finish("error", api.plainWords(error)))
    .finally(() => {
      if (state.follow === controller) {
        state.follow = null;
        state.runId = null;
        setRunning(false);
      }
      refreshSpending();
      if (forked) showVersionsOf(sessionId, runId, asked);
    });
}

/** An edit or a regeneration made a new version of a question: its ‹ n/N › control, as the server now counts them. */
async function showVersionsOf(sessionId, runId, article) {
  try {
    const { messages } = await api.json(api.asSession(sessionId, "/api/v1/chatbot/messages"));
    const question = messages.find((message) => message.id === runId);
    if (question && article.isConnected) showVersions(article, question.branch, controls);
  } catch {
    // The arrows are a convenience: the next time the chat is opened shows them.
  }
}

/** Remove a question and everything after it: an edit or a regeneration continues from just before it. */
function dropFrom(messageId) {
  const question = [...$("messages").querySelectorAll("article.user")].find((item) => item.dataset.message === messageId);
  while (question?.nextElementSibling) question.nextElementSibling.remove();
  question?.remove();
}

/** A new run for a question (edited, or answered again), streamed in its place; false, with the error shown, if refused. */
async function forkedRun(messageId, path, body) {
  showError(null);
  try {
    await state.loading;
    const run = await api.json(api.asSession(state.sessionId, `/api/v1/chatbot/messages/${messageId}/${path}`, { method: "POST", body }));
    dropFrom(messageId);
    setAwaiting("none");
    startAnswer(run.id, run.input, { forked: true });
    return true;
  } catch (error) {
    showError(error);
    return false;
  }
}

/** Another version of the conversation: the one holding the question ``messageId``, at its latest turn. The focus
 * stays on the arrow that was used (or its twin, where that one is now at the end). */
async function switchBranch(messageId, label) {
  showError(null);
  try {
    await state.loading;
    const { messages, approval } = await api.json(
      api.asSession(state.sessionId, `/api/v1/chatbot/messages/${messageId}/branch`, { method: "POST" }),
    );
    $("messages").replaceChildren(...renderHistory(state.sessionId, messages, controls, { approval: approval?.calls, answerApproval }));
    setAwaiting(approval ? "approval" : "none");
    const question = [...$("messages").querySelectorAll("article.user")].find((item) => item.dataset.message === messageId);
    const arrows = [...(question?.querySelectorAll(".versions button") || [])];
    (arrows.find((arrow) => arrow.getAttribute("aria-label") === label && !arrow.disabled) || arrows.find((arrow) => !arrow.disabled))?.focus();
  } catch (error) {
    showError(error);
  }
}

const controls = {
  edit: (messageId, content) => forkedRun(messageId, "edit", { content }),
  regenerate: (messageId) => forkedRun(messageId, "regenerate", {}),
  switchBranch,
};

/** Send the decisions on the tool calls awaiting approval, then follow the resumed turn below their card. Resolves
 * null once accepted, or with the error for the card to show. Nothing pending any more (answered in another tab):
 * the chat is shown as it now stands, with a word why. */
async function answerApproval(body) {
  const sessionId = state.sessionId;
  showError(null);
  try {
    await state.loading;
    const run = await api.json(api.asSession(sessionId, "/api/v1/chatbot/approval", { method: "POST", body }));
    if (state.sessionId !== sessionId) return null;
    setAwaiting("none");
    startAnswer(run.id, null);
    return null;
  } catch (error) {
    if (error instanceof api.ApiError && error.code === "no-approval-pending" && state.sessionId === sessionId) {
      await openSession(sessionId);
      showError(error);
      return null;
    }
    if (error instanceof api.ApiError && (error.status === 401 || error.code === "budget-exceeded")) showError(error);
    return error;
  }
}

async function send(event) {
  event?.preventDefault();
  const input = $("input");
  const text = input.value.trim();
  if (!text || !state.sessionId) return;
  showError(null);
  try {
    // A chat still loading replaces the message list when its history arrives: the answer waits for it.
    await state.loading;
    const run = await api.json(
      api.asSession(state.sessionId, "/api/v1/chatbot/runs", { method: "POST", body: { messages: [{ role: "user", content: text }] } }),
    );
    if (input.value.trim() === text) input.value = ""; // what was typed while it was sending stays
    const reply = state.awaiting !== "none";
    if (state.awaiting === "approval") settleOpenCards("You sent a message instead: the calls are rejected, with it as the reason.");
    setAwaiting("none");
    startAnswer(run.id, text, { reply });
    nameAfterFirstMessage(state.sessionId, text);
  } catch (error) {
    showError(error);
  }
}

/** A chat with no name yet is named after its first message, as people find it again in the list. */
async function nameAfterFirstMessage(sessionId, text) {
  const session = state.sessions.find((s) => s.session_id === sessionId);
  if (!session || session.name) return;
  const name = text.split("\n")[0].slice(0, 60).trim();
  try {
    const renamed = await api.json(api.asUser(`/api/v1/auth/session/${sessionId}/name`, { method: "PATCH", body: { name } }));
    session.name = renamed.name;
    renderSessions();
    if (state.sessionId === sessionId) $("session-title").textContent = renamed.name;
  } catch {
    // A name is a convenience: the chat works without one.
  }
}

async function stop() {
  if (!state.runId) return;
  try {
    await api.json(api.asSession(state.sessionId, `/api/v1/chatbot/runs/${state.runId}/cancel`, { method: "POST" }));
  } catch (error) {
    showError(error);
  }
}

function showError(error) {
  $("chat-error").textContent = error ? api.plainWords(error) : "";
  if (error instanceof api.ApiError && error.code === "budget-exceeded") refreshSpending();
  if (error instanceof api.ApiError && error.status === 401) signOut();
}

const nearEnd = () => {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
};
const scrollToEnd = (force = false) => {
  const box = $("messages");
  if (force || nearEnd()) box.scrollTop = box.scrollHeight;
};

// -- layout and keys ------------------------------------------------------------------------------------------------

function closeSidebar() {
  $("sidebar").classList.remove("open");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

function toggleSidebar() {
  const open = $("sidebar").classList.toggle("open");
  $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  if (open) $("new-session").focus();
}

function onKey(event) {
  if (event.target === $("input") && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  } else if (event.key === "Escape" && state.runId && !document.querySelector("dialog[open]")) {
    event.preventDefault();
    stop();
  }
}

function watchConnection() {
  const update = () => ($("offline").hidden = navigator.onLine);
  window.addEventListener("online", update);
  window.addEventListener("offline", update);
  update();
  // A tab that slept long may have missed an answer that ended meanwhile: show the chat as it now stands.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      state.hiddenAt = Date.now();
      return;
    }
    const slept = state.hiddenAt && Date.now() - state.hiddenAt > 10_000;
    state.hiddenAt = 0;
    if (slept && state.sessionId && !state.follow) openSession(state.sessionId);
  });
}

async function boot() {
  $("auth-form").addEventListener("submit", submitAuth);
  $("auth-switch").addEventListener("click", () => setAuthMode(!state.signingUp));
  $("signout").addEventListener("click", signOut);
  $("new-session").addEventListener("click", newSession);
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("toggle-sidebar").addEventListener("click", toggleSidebar);
  $("open-memory").addEventListener("click", () => openMemory());
  $("open-keys").addEventListener("click", () => openKeys());
  document.addEventListener("keydown", onKey);
  watchConnection();
  try {
    await api.refresh();
    await enterApp();
  } catch (error) {
    setAuthMode(false);
    show("signin");
    if (!(error instanceof api.ApiError)) $("auth-error").textContent = api.plainWords(error);
    $("email").focus();
  }
  document.documentElement.dataset.ready = "true";
  performance.mark("agentctl-ready"); // interactive: the sign-in form or the chat is on screen and wired
}

boot();
