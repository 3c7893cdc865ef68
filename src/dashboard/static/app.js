// paddock dashboard: live log panes. Every element with data-follow="RUN"
// streams that run's log over Server-Sent Events until the run ends. The
// page works without this file; only live output needs it.
"use strict";

function follow(pane) {
  const id = pane.dataset.follow;
  const stateEl = document.querySelector("[data-state]");
  const es = new EventSource("/api/v1/runs/" + encodeURIComponent(id) + "/log/follow");
  let cleared = false;
  const stickToBottom = () => pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
  es.addEventListener("log", (e) => {
    const bottom = stickToBottom();
    if (!cleared) { pane.textContent = ""; cleared = true; }
    pane.appendChild(document.createTextNode(JSON.parse(e.data)));
    if (bottom) pane.scrollTop = pane.scrollHeight;
  });
  es.addEventListener("state", (e) => {
    const s = JSON.parse(e.data);
    if (stateEl) stateEl.textContent = s.state_label;
  });
  es.addEventListener("end", (e) => {
    const s = JSON.parse(e.data);
    if (stateEl) stateEl.textContent = s.state_label + (s.outcome ? " · " + s.outcome : "");
    if (!cleared) { pane.textContent = ""; cleared = true; }
    pane.dataset.ended = s.outcome || s.state;
    // The server closes the stream; without close() the browser would reconnect.
    es.close();
  });
  es.onerror = () => { if (!cleared) pane.dataset.error = "1"; };
}

document.querySelectorAll("[data-follow]").forEach(follow);
