// Polls an admin route for the page's status lines (libraries.js, migration.js). The page sends
// no API key, so such a route is readable only on a gateway without one: an answer of 401, 403
// (it needs a key) or 404 (nothing of the kind is configured) stops the polling for the life of
// the page.

// While work is pending the page follows it closely; once idle, a look now and then notices
// work started from elsewhere.
const BUSY_MS = 2000;
const IDLE_MS = 30000;

/**
 * GET `path` (relative to the page) now and after each answer. `onAnswer(body)` gets the JSON
 * of each answer ({} for one that is not OK or not JSON) and returns whether work is pending,
 * which sets when to look again; `onStop()` runs when the route is refused or missing.
 */
export function poll(path, { onAnswer, onStop }) {
  async function look() {
    if (document.hidden) {
      // No requests from a tab nobody looks at; the next look is when it is shown again.
      document.addEventListener("visibilitychange", look, { once: true });
      return;
    }
    let response;
    try {
      response = await fetch(new URL(path, document.baseURI), { cache: "no-store" });
    } catch {
      setTimeout(look, IDLE_MS); // the gateway is unreachable: app.js says so; look again later
      return;
    }
    if (response.status === 401 || response.status === 403 || response.status === 404) {
      onStop();
      return;
    }
    let body = {};
    if (response.ok) {
      try {
        body = (await response.json()) ?? {};
      } catch {
        body = {};
      }
    }
    setTimeout(look, onAnswer(body) ? BUSY_MS : IDLE_MS);
  }
  look();
}
