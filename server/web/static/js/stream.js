// Following a run's events (server-sent events over fetch, which unlike EventSource can carry the session token in a
// header). A dropped connection is rejoined where it stopped, with Last-Event-ID: the run goes on at the server
// whatever happens to the page, so no answer is lost and none is shown twice.
import { createParser } from "/web/vendor/eventsource-parser/index.js";
import { asSession, failure, OfflineError } from "/web/js/api.js";

const FINAL = new Set(["done", "error"]);
const MAX_BACKOFF_MS = 5000;

function onlineAgain(signal) {
  return new Promise((resolve) => {
    const done = () => {
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    window.addEventListener("online", done);
    signal.addEventListener("abort", done);
  });
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Calls onEvent(kind, data) for each event of the run after ``after`` (an event id, or "" for all of them) until its
 * last one; onConnection(state) with "live" or "reconnecting". Resolves with the last event's kind; rejects with the
 * server's ApiError when it refuses (another session's run, expired events).
 */
export async function followRun(sessionId, runId, { after = "", signal, onEvent, onConnection = () => {} }) {
  let lastId = after;
  let backoff = 250;
  while (!signal.aborted) {
    let ended = null;
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await asSession(sessionId, `/api/v1/chatbot/runs/${runId}/stream`, { headers, signal });
      if (!response.ok) throw await failure(response);
      onConnection("live");
      backoff = 250;
      const parser = createParser({
        onEvent(message) {
          if (message.id) lastId = message.id;
          const data = JSON.parse(message.data);
          onEvent(message.event, data);
          if (FINAL.has(message.event)) ended = message.event;
        },
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
      }
      if (ended) {
        reader.cancel().catch(() => {});
        return ended;
      }
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") break;
      if (!(error instanceof OfflineError) && !(error instanceof TypeError)) throw error;
    }
    // The connection ended before the run did: rejoin after the last event received.
    onConnection("reconnecting");
    if (!navigator.onLine) await onlineAgain(signal);
    else await pause(backoff, signal);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }
  return "aborted";
}
