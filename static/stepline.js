// Stepline's few lines of browser code. The browser keeps no job or step
// status: everything below is view state (open panels, scrolling, clocks).
window.stepline = {
  // Expand: fetch the step's log (its end; a failed step's first error).
  // Collapse: drop the lines from the DOM. The button's aria-controls names
  // the body it fills.
  toggle(button) {
    const body = document.getElementById(button.getAttribute("aria-controls"));
    if (body.firstElementChild) {
      body.replaceChildren();
      button.setAttribute("aria-expanded", "false");
    } else {
      openPanel(button, body, button.dataset.panelUrl);
    }
  },
};

function openPanel(button, body, url) {
  button.setAttribute("aria-expanded", "true");
  htmx.ajax("GET", url, {target: body, swap: "innerHTML"}).then(() => place(body));
}

// Where an opened panel starts: at its marked line (a failed step's first
// error, a linked line), else at its last line, with no scrolling left to do.
function place(body) {
  const box = body.querySelector(".log-lines");
  if (!box) return;
  const at = box.querySelector(".ll.at");
  if (at) at.scrollIntoView({block: "center"});
  else {
    scrollToEnd(box);
    // The whole box on screen (the page moves only as far as needed): its
    // last line is what the person opened the step for.
    box.scrollIntoView({block: "nearest"});
  }
}
function scrollToEnd(box, frames = 2) {
  box.scrollTop = box.scrollHeight;
  // Blocks get their real height once laid out in view (content-visibility):
  // the height changes once or twice more.
  if (frames) requestAnimationFrame(() => scrollToEnd(box, frames - 1));
}
// The box scrolled so that `row` is its last line in view: what was read
// stays in sight at the bottom, what came above it fills the view. Again
// for two frames, as the blocks settle their heights (see scrollToEnd).
function showAtBottom(box, row, frames = 2) {
  const bottom = box.getBoundingClientRect().top + box.clientTop + box.clientHeight;
  box.scrollTop += row.getBoundingClientRect().bottom - bottom;  // above a scrollbar
  if (frames) requestAnimationFrame(() => showAtBottom(box, row, frames - 1));
}

// A link to a line (#log-<step id>-L<n>): the line is marked; a line not on the
// page opens its step's panel around it. A click on a line number is such a
// link (the browser puts it in the URL).
function openLink() {
  const link = location.hash.match(/^#log-(.+)-L(\d+)$/);
  if (!link) return;
  const line = document.getElementById(location.hash.slice(1));
  if (line) {
    for (const old of line.closest(".log-lines").querySelectorAll(".ll.at")) {
      old.classList.remove("at");
    }
    line.classList.add("at");
    return;
  }
  const button = document.getElementById(`toggle-${link[1]}`);
  if (!button) return;
  const url = new URL(button.dataset.panelUrl, location.href);
  url.searchParams.set("at", link[2]);
  openPanel(button, document.getElementById(`panel-body-${link[1]}`), url.pathname + url.search);
}
window.addEventListener("hashchange", openLink);
document.addEventListener("DOMContentLoaded", () => {
  // a failed job's page comes with its failed step open (server-rendered)
  for (const panel of document.querySelectorAll(".log-panel")) place(panel.parentElement);
  openLink();
});

// The indicator says "offline" the moment the connection drops (htmx keeps
// reconnecting), and "live" again once a message (the snapshot) arrives.
function setLive(el, live) {
  if (el.id !== "live") return;
  el.classList.toggle("offline", !live);
  const text = live ? "live" : "offline \u2014 reconnecting";
  if (el.textContent !== text) el.textContent = text;  // not a DOM change per message
}
for (const name of ["ws:after:message:incoming", "sse:after:message"]) {
  document.addEventListener(`htmx:${name}`, (e) => setLive(e.target, true));
}
for (const name of ["ws:close", "sse:error", "sse:close"]) {
  document.addEventListener(`htmx:${name}`, (e) => setLive(e.target, false));
}
// An SSE stream that ends cleanly fires no error: its next attempt says so.
document.addEventListener("htmx:sse:before:connection", (e) => {
  if (e.target.dataset.opened) setLive(e.target, false);
  e.target.dataset.opened = "1";
});

// Fall back to SSE when the WebSocket never opens.
document.addEventListener("htmx:ws:after:connection", (e) => {
  e.target.dataset.opened = "1";
});
document.addEventListener("htmx:ws:close", (e) => {
  const el = e.target;
  if (el.dataset.opened || !el.dataset.sseUrl) return;
  const sse = document.createElement("span");
  sse.id = el.id;
  sse.className = "live";
  sse.setAttribute("hx-sse:connect", el.dataset.sseUrl);
  sse.textContent = "live";
  el.replaceWith(sse);
  htmx.process(sse);
});

// Log panels, as an htmx extension: its hooks see every request, even one
// whose trigger span a newer log_refresh has replaced (events of a detached
// element never reach a document listener).
const lineOf = (row) => row && parseInt(row.id.slice(row.id.lastIndexOf("L") + 1));
const ROWS_END = "<!-- end of rows -->";  // templates/log_lines.html
const logBox = (ctx) => ctx?.target?.classList?.contains("log-lines") ? ctx.target : null;
const cursorOf = (box) => document.getElementById(`${box.id}-cursor`);
htmx.registerExtension("stepline-logs", {
  // A request takes the panel's state (its cursor: last line, filter, match
  // count) when it is sent, not when it was triggered: a queued request was
  // built earlier, and its `after` would fetch lines the panel already
  // holds. A new filter (`tail`) sends the form's.
  htmx_before_request: (elt, {ctx}) => {
    const box = logBox(ctx);
    if (!box) return;
    // collapsed while the request waited: nothing to fetch for
    if (!box.isConnected) return false;
    const url = new URL(ctx.request.action, location.href);
    if (url.searchParams.has("tail")) return;
    // A panel read at a line ("load later lines" shown) stays there: a live
    // fetch would append (and trim away the line read) or, far behind,
    // replace the panel with the newest lines. Its lines wait for the button.
    const live = !url.searchParams.has("before") && !url.searchParams.has("later");
    if (live && !document.getElementById(`${box.id}-later`).hidden) return false;
    for (const input of cursorOf(box).querySelectorAll("input")) {
      url.searchParams.set(input.name, input.value);
    }
    if (url.searchParams.has("before")) {
      url.searchParams.set("before", lineOf(box.querySelector(".ll")) || 1);
    }
    ctx.request.action = url.pathname + url.search;
  },
  // The rows of a lines response go in with insertAdjacentHTML, and htmx
  // swaps only the rest (cursor, trigger, match count, "load earlier"). htmx
  // parses a response into a separate document and adopts its nodes: for
  // 2,000 lines that, with its scans of the parsed nodes, was ~150 of ~200 ms
  // of main thread; Chromium's own fragment parser takes ~15 ms. The rows
  // are hx-ignore blocks, so htmx has nothing to do in them.
  htmx_after_request: (elt, {ctx}) => {
    const box = logBox(ctx);
    if (!box) return;
    if (!box.isConnected) return false;  // collapsed meanwhile
    // An answer for another filter than the panel now shows is dropped.
    const url = new URL(ctx.request.action, location.href);
    const cursor = cursorOf(box);
    if (!url.searchParams.has("tail") && ["level", "q"].some(
      (name) => (url.searchParams.get(name) ?? "") !== cursor.querySelector(`[name=${name}]`).value)) {
      return false;
    }
    // Follow mode: stick to the bottom only while the reader is at the bottom.
    box.dataset.atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8 ? "1" : "";
    const end = ctx.response.status === 200 ? ctx.text.indexOf(ROWS_END) : -1;
    const swap = ctx.hx?.reswap || ctx.swap;
    if (end < 0 || !["beforeend", "afterbegin", "innerHTML"].includes(swap)) return;
    if (swap === "innerHTML") box.replaceChildren();
    // The line first before an earlier page comes: where the reader was.
    if (swap === "afterbegin") ctx.firstBefore = box.querySelector(".ll");
    const none = box.querySelector(":scope > .none");  // "no lines yet"
    box.insertAdjacentHTML(swap === "afterbegin" ? "afterbegin" : "beforeend", ctx.text.slice(0, end));
    // It goes once lines come. A CSS rule (`.none:not(:only-child)`) did
    // that, at the price of a style check of the box's children per append.
    if (none && box.childElementCount > 1) none.remove();
    ctx.text = ctx.text.slice(end + ROWS_END.length);
    ctx.rowsSwap = swap;
    ctx.swap = "none";  // the out-of-band parts still swap, each by its own hx-swap-oob
    delete ctx.hx.reswap;
  },
  htmx_after_swap: (elt, {ctx}) => {
    const box = logBox(ctx);
    if (!box) return;
    const swap = ctx.rowsSwap || ctx.swap;
    if (swap?.startsWith("beforeend")) trimWindow(box);
    const follow = box.closest(".log-panel")?.querySelector(".follow");
    if (swap === "afterbegin") {
      // Asking for earlier lines is reading back, as scrolling up is
      // (stopFollowing): "follow" goes off, and the view shows the end of
      // the new lines just above the line that was first.
      follow.checked = false;
      if (ctx.firstBefore) showAtBottom(box, ctx.firstBefore);
      // A step still logging: new lines would soon trim away the lines asked
      // for (the window is full within seconds at 1,000 lines/s), so they
      // wait for "load later lines", as in a panel opened at a line;
      // "follow" brings the newest back.
      const step = document.getElementById(box.id.replace("logs-", "step-"));
      if (step?.dataset.status === "running") {
        document.getElementById(`${box.id}-later`).hidden = false;
      }
    }
    // New lines in place of the panel's (a new filter): shown from the end.
    if (swap === "innerHTML") scrollToEnd(box);
    else if (follow?.checked && box.dataset.atBottom) box.scrollTop = box.scrollHeight;
  },
});

// A panel keeps its newest `data-window` lines in the DOM: following a
// million-line log stays as fast as following a short one. Lines come in
// blocks of 100; whole blocks go first, then the oldest rows of the next.
// Dropped lines come back through "load earlier".
function trimWindow(box) {
  // Counted per block: selecting 7,000 rows on every swap showed in profiles.
  let shown = 0;
  for (const block of box.children) shown += block.childElementCount;
  let extra = shown - parseInt(box.dataset.window);
  if (extra <= 0) return;
  while (box.firstElementChild.childElementCount <= extra) {
    extra -= box.firstElementChild.childElementCount;
    box.firstElementChild.remove();
  }
  if (extra > 0) {
    const block = box.firstElementChild;
    const range = document.createRange();
    range.setStart(block, 0);
    range.setEndBefore(block.children[extra]);
    range.deleteContents();
  }
  document.getElementById(`${box.id}-earlier`).hidden = false;
}

// Running durations tick locally from the server's start time, in the
// format of the server's duration() (stepline/web/render.py).
stepline.duration = (s) => {
  if (Math.round(s * 1000) < 1000) return `${Math.round(s * 1000)}ms`;
  if (s < 60) return s < 10 ? s.toFixed(1) + "s" : s.toFixed(0) + "s";
  const pad = (n) => String(n).padStart(2, "0");
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`;
  return `${Math.floor(m / 60)}h ${pad(m % 60)}m`;
};
// How long ago, in the format of the server's ago() (render.py): <time data-at>.
stepline.ago = (s) => {
  if (s < 10) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  const days = Math.floor(s / 86400);
  return `${days} day${days > 1 ? "s" : ""} ago`;
};
// A live step timeline (job_timeline.html) was drawn with its axis ending at
// the server's "now": stretch it to this one, so a running step's bar grows
// between fetches even while the step logs nothing (no message, no fetch).
// Every x and width shrinks by the same factor; a running bar ends at the
// axis's end; the server's attributes stay the unscaled base (a refetch
// morphs them in, the next tick scales again).
stepline.growTimelines = (now) => {
  for (const svg of document.querySelectorAll("svg.timeline[data-t0]")) {
    const drawn = parseFloat(svg.dataset.seconds);
    const total = Math.max(now - parseFloat(svg.dataset.t0), drawn);
    const k = drawn / total;
    for (const g of svg.querySelectorAll("g.span")) {
      const rect = g.querySelector("rect"), name = g.querySelector("text.name");
      const x = parseFloat(rect.getAttribute("x")) * k;
      const width = g.classList.contains("status-running")
        ? 100 - x : parseFloat(rect.getAttribute("width")) * k;
      rect.style.x = `${x}%`;
      rect.style.width = `${Math.max(width, 0.5)}%`;
      const at = name.getAttribute("text-anchor") === "end" ? x + width : x;
      name.setAttribute("dx",  // its x attribute stays the base
        `${at - parseFloat(name.getAttribute("x"))}%`);
    }
    const ticks = svg.querySelectorAll("text.axis");
    ticks.forEach((tick, i) => {
      if (i) tick.textContent = stepline.duration(total * i / (ticks.length - 1));
    });
  }
};
// A text is written only when it changes: the same text written again is
// still a new text node, and 25 "just now"s a second cost the jobs list a
// layout and paint of its table every second.
const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
setInterval(() => {
  const now = Date.now() / 1000;
  stepline.growTimelines(now);
  for (const el of document.querySelectorAll("[data-since]")) {
    setText(el, stepline.duration(now - parseFloat(el.dataset.since)));
  }
  for (const el of document.querySelectorAll("time[data-at]")) {
    setText(el, stepline.ago(now - parseFloat(el.dataset.at)));
  }
}, 1000);

// The view toggles (timestamps, follow) change the view only: their input
// and change events must never reach the panel's filter form, which would
// reload the panel and reset them. Stopped on the way down; the box still
// toggles.
for (const type of ["input", "change"]) {
  document.addEventListener(type, (event) => {
    if (!event.target.matches(".ts-toggle, .follow")) return;
    event.stopPropagation();
    // A class, not `.log-panel:has(.ts-toggle:checked)`: see stepline.css.
    if (event.target.matches(".ts-toggle")) {
      event.target.closest(".log-panel").classList.toggle("with-ts", event.target.checked);
    }
    if (type === "change" && event.target.matches(".follow:checked")) followAgain(event.target);
  }, true);
}
// "follow" ticked again: back to the newest lines. A panel read at a line
// fetches them, as a new filter does; any other scrolls to its end.
function followAgain(checkbox) {
  const panel = checkbox.closest(".log-panel");
  if (!panel.querySelector(".later").hidden) htmx.trigger(panel.querySelector("form"), "submit");
  else scrollToEnd(panel.querySelector(".log-lines"));
}

// "follow" says what the panel does: a person scrolling back to read
// (wheel or touch upwards, PageUp/ArrowUp/Home, a drag of the scrollbar)
// unticks it, before any new line can pull the box back down; new lines
// then wait below until it is ticked again. Judged by what the person did,
// not by the scroll position: the log blocks settle their height a frame
// after a scroll to the end (see scrollToEnd).
function stopFollowing(event) {
  const box = event.target.closest?.(".log-lines");
  const follow = box?.closest(".log-panel")?.querySelector(".follow");
  if (follow) follow.checked = false;
}
let touchY = 0;  // where the finger was: dragging it down scrolls back
document.addEventListener("touchstart", (event) => { touchY = event.touches[0].clientY; },
                          {capture: true, passive: true});
const backwards = {
  wheel: (event) => event.deltaY < 0,
  touchmove: (event) => event.touches[0].clientY > touchY,
  keydown: (event) => ["PageUp", "ArrowUp", "Home"].includes(event.key),
  pointerdown: (event) => event.target.classList?.contains("log-lines")
    && event.offsetX > event.target.clientWidth,  // on the scrollbar itself
};
for (const [type, isBack] of Object.entries(backwards)) {
  document.addEventListener(type, (event) => { if (isBack(event)) stopFollowing(event); },
                            {capture: true, passive: true});
}

// A button's new request clears what the last one said went wrong.
document.addEventListener("htmx:before:request", (event) => {
  if (event.detail.ctx?.sourceElement?.matches?.("button[hx-post]")) {
    document.getElementById("action-error")?.replaceChildren();
  }
});
// A button whose request never reached the server (offline, or the server
// stopped): say so where a refused action says why (#action-error).
document.addEventListener("htmx:error", (event) => {
  const button = event.detail.ctx?.sourceElement;
  const alert = document.getElementById("action-error");
  if (!alert || !button?.matches?.("button[hx-post]")) return;
  alert.replaceChildren(Object.assign(document.createElement("p"), {
    className: "error",
    textContent: `could not reach the server: "${button.textContent.trim()}" was not sent;`
      + " try again once the page says live",
  }));
});

// An open task table's live refresh (task_trigger.html) fetches what the
// table shows when the request is sent, not when it was queued: a refresh
// queued before a click on "next" must not bring the old page back. A table
// closed meanwhile is not reopened, whether its refresh was still waiting
// or already on its way.
const refreshed = (ctx) => ctx.sourceElement?.dataset?.refresh;
htmx.registerExtension("stepline-tasks", {
  htmx_before_request: (elt, {ctx}) => {
    if (!refreshed(ctx)) return;
    const table = document.getElementById(refreshed(ctx));
    if (!table) return false;
    const url = new URL(ctx.request.action, location.href);
    ctx.request.action = `${url.pathname}?${table.dataset.query}`;
  },
  htmx_before_swap: (elt, {ctx}) => {
    if (refreshed(ctx) && !document.getElementById(refreshed(ctx))) return false;
  },
});
