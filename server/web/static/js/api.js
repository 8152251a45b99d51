// The page's only way to the server. Tokens live in this module's memory and nowhere else: the access token and
// the session tokens are variables, the refresh token is an httpOnly cookie the browser sends to one route only.

import { budgetRefusal } from "/web/js/budget.js";

const CSRF_HEADER = "X-Agentctl-CSRF";

/** A failed request, with what the server said (problem+json) and how long to wait, if it said. */
export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = (problem.type || "").replace("urn:agentctl:problem:", "");
    this.detail = problem.detail || "";
    this.requestId = problem.request_id || "";
    this.errors = Array.isArray(problem.errors) ? problem.errors : []; // [{field, message}] of a 422
    this.budget = problem.budget && typeof problem.budget === "object" ? problem.budget : null; // of budget-exceeded
    this.retryAfter = retryAfter;
  }
}

/** Thrown when the network, not the server, failed (offline, connection reset). */
export class OfflineError extends Error {}

let accessToken = null;
let user = null;
const sessionTokens = new Map();
let refreshing = null;

export const currentUser = () => user;

function forget() {
  accessToken = null;
  user = null;
  sessionTokens.clear();
}

async function send(path, { method = "GET", body, token, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal, credentials: "same-origin", cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new OfflineError("the server cannot be reached");
  }
}

async function failure(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText };
  }
  const wait = Number.parseFloat(response.headers.get("Retry-After") || "");
  return new ApiError(response.status, problem, Number.isFinite(wait) ? wait : null);
}

async function signedIn(response) {
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  accessToken = body.token.access_token;
  user = body.user;
  return user;
}

/** A new access token from the refresh cookie. One at a time across tabs: a refresh token works once, and two tabs
 * presenting the same one would look like a theft and end the sign-in. */
export function refresh() {
  refreshing ??= navigator.locks
    .request("agentctl-refresh", async () =>
      signedIn(await send("/api/v1/auth/web/refresh", { method: "POST", headers: { [CSRF_HEADER]: "1" } })),
    )
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

export async function signIn(email, password) {
  forget();
  return signedIn(await send("/api/v1/auth/web/login", { method: "POST", body: { email, password } }));
}

export async function signUp(email, password) {
  forget();
  return signedIn(await send("/api/v1/auth/web/register", { method: "POST", body: { email, password } }));
}

export async function signOut() {
  try {
    if (accessToken) await send("/api/v1/auth/web/logout", { method: "POST", token: accessToken });
  } finally {
    forget();
  }
}

/** A request as the signed-in user; an expired access token is renewed once. */
export async function asUser(path, options = {}) {
  if (!accessToken) await refresh();
  let response = await send(path, { ...options, token: accessToken });
  if (response.status === 401) {
    await refresh();
    response = await send(path, { ...options, token: accessToken });
  }
  return response;
}

async function sessionToken(sessionId, renew) {
  if (renew || !sessionTokens.has(sessionId)) {
    const response = await asUser(`/api/v1/auth/session/${sessionId}/token`, { method: "POST" });
    if (!response.ok) throw await failure(response);
    sessionTokens.set(sessionId, (await response.json()).token.access_token);
  }
  return sessionTokens.get(sessionId);
}

/** A request acting for one session (its own token, minted on first use and renewed when it expires). */
export async function asSession(sessionId, path, options = {}) {
  let response = await send(path, { ...options, token: await sessionToken(sessionId, false) });
  if (response.status === 401) response = await send(path, { ...options, token: await sessionToken(sessionId, true) });
  return response;
}

export const rememberSessionToken = (sessionId, token) => sessionTokens.set(sessionId, token);

/** The body of a successful response (null for 204), or the ApiError of a failed one. */
export async function json(responsePromise) {
  const response = await responsePromise;
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

export { failure };

/** An error in the words a user needs: what happened, and what to do about it. */
export function plainWords(error) {
  if (error instanceof OfflineError) return "You are offline, or the server cannot be reached. Check the connection and try again.";
  if (!(error instanceof ApiError)) return `Something went wrong in the page: ${error.message}`;
  const wait = error.retryAfter != null ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : " Try again shortly.";
  if (error.code === "budget-exceeded" && error.budget) return budgetRefusal(error.budget);
  switch (error.status) {
    case 409:
      if (error.code === "turn-in-progress") return "This chat is still answering your last message: wait for it, or press Stop.";
      if (error.code === "no-approval-pending")
        return "Those tool calls no longer await your decision (answered already, perhaps in another tab): the chat shows where it now stands.";
      if (error.code === "message-too-old")
        return "This message is too old to edit or answer again: the chat's state before it is no longer kept.";
      return `That conflicts with what is already there: ${error.detail}`;
    case 404:
      if (error.code === "message-not-found") return "That message is no longer in this chat. Reload the page to see the chat as it is.";
      return `${error.detail || error.message} (request ${error.requestId || "unknown"})`;
    case 429:
      return `Too many requests: you have reached the rate limit.${wait}`;
    case 503:
    case 502:
    case 504:
      return /memory/i.test(error.detail) ? `Memory is unavailable: ${error.detail}` : `The model is unavailable right now.${wait}`;
    case 401:
      return error.detail ? `Not signed in: ${error.detail}.` : "Not signed in.";
    case 413:
    case 422:
      return error.detail.charAt(0).toUpperCase() + error.detail.slice(1) + ".";
    default:
      return `${error.detail || error.message} (request ${error.requestId || "unknown"})`;
  }
}
