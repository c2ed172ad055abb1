// Stepline's few lines of browser code. The browser keeps no job or step
// status: everything below is view state (open panels, scrolling, clocks).
window.stepline = {
  // Expand: fetch the step's log tail. Collapse: drop the lines from the DOM.
  toggle(button) {
    const body = document.getElementById(button.getAttribute("aria-controls").replace("panel-", "panel-body-"));
    if (body.firstElementChild) {
      body.replaceChildren();
      button.setAttribute("aria-expanded", "false");
    } else {
      button.setAttribute("aria-expanded", "true");
      htmx.ajax("GET", button.dataset.panelUrl, {target: body, swap: "innerHTML"});
    }
  },
};

// Fall back to SSE when the WebSocket never opens.
document.addEventListener("htmx:ws:after:connection", (e) => {
  e.target.dataset.opened = "1";
  e.target.classList.remove("offline");
});
document.addEventListener("htmx:ws:close", (e) => {
  const el = e.target;
  el.classList.add("offline");
  if (el.dataset.opened || !el.dataset.sseUrl) return;
  const sse = document.createElement("span");
  sse.id = el.id;
  sse.className = "live";
  sse.setAttribute("hx-sse:connect", el.dataset.sseUrl);
  sse.textContent = el.textContent;
  el.replaceWith(sse);
  htmx.process(sse);
});

// Follow mode: stick to the bottom only while the reader is at the bottom.
document.addEventListener("htmx:before:swap", (e) => {
  const box = e.detail?.ctx?.target;
  if (box?.classList?.contains("log-lines")) {
    box.dataset.atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8 ? "1" : "";
  }
});
document.addEventListener("htmx:after:swap", (e) => {
  const box = e.detail?.ctx?.target;
  const follow = box?.closest?.(".log-panel")?.querySelector(".follow");
  if (box?.classList?.contains("log-lines") && follow?.checked && box.dataset.atBottom) {
    box.scrollTop = box.scrollHeight;
  }
});

// Running durations tick locally from the server's start time.
setInterval(() => {
  for (const el of document.querySelectorAll("[data-since]")) {
    const s = Date.now() / 1000 - parseFloat(el.dataset.since);
    el.textContent = s < 10 ? s.toFixed(1) + "s" : s < 60 ? Math.floor(s) + "s"
      : Math.floor(s / 60) + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  }
}, 1000);
