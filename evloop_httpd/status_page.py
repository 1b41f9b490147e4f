"""The status page (/): one self-contained HTML document that polls /status.json and redraws.

Theory of operation
-------------------
The page is a constant: the server sends the same bytes every time, and every number on it
comes from /status.json, fetched by its inline script every ``POLL_MS`` (the next fetch starts
only when the last one has ended, so a slow server is never polled faster than it answers).
So nothing a client sent is ever spliced into HTML on the server, and in the browser every
value goes into the DOM through ``textContent`` (state names become class names only after
matching a fixed list): a hostile request line shows as text, never as markup.

There are no external assets: one ``<style>`` and one ``<script>``, both inline, and a
Content-Security-Policy that allows exactly those two by their SHA-256 hashes (computed when
this module is imported, so they cannot drift from the text), fetches from the same origin
only, and nothing else: no other script, style, image, frame, form target or base URL.

At 10,000 connections the page stays light because the JSON does: it lists at most 200 rows
(busy first, then oldest) and the page draws those, plus one summary line of the totals by
state and how many rows were left out. The sparklines are two small canvases drawn from the
snapshot's 60-second rings: requests per second and the slowest loop iteration per second.
"""

from __future__ import annotations

import base64
import hashlib

POLL_MS = 400  # the issue: "redraws a few times a second"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fdfdfd; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
#status { color: #666; }
#status.down { color: #b00; font-weight: bold; }
.totals { display: flex; flex-wrap: wrap; gap: .5em 2em; margin: .6em 0; }
.totals div { min-width: 9em; }
.totals b { display: block; font-size: 1.4em; font-variant-numeric: tabular-nums; }
.spark { display: inline-block; margin-right: 2em; }
.spark canvas { display: block; border: 1px solid #ccc; background: #fff; }
table { border-collapse: collapse; margin-top: .6em; font-variant-numeric: tabular-nums; }
th, td { padding: 1px 8px; text-align: left; white-space: nowrap; }
td.num { text-align: right; }
td.req { max-width: 40em; overflow: hidden; text-overflow: ellipsis; font-family: monospace; }
th { border-bottom: 1px solid #999; }
.st-PROXY_HEADER { background: #efe7fd; }
.st-HANDSHAKING { background: #efe7fd; }
.st-READING_HEADERS { background: #e8f0fe; }
.st-AUTHENTICATING { background: #fde7f3; }
.st-WRITING_CONTINUE { background: #fff4d6; }
.st-READING_BODY { background: #fce8d4; }
.st-PREPARING { background: #f3f7d4; }
.st-WRITING_HEADERS { background: #e6f4ea; }
.st-STREAMING_FILE { background: #c9ecd3; }
.st-LINGERING { background: #eeeeee; }
.st-other { background: #fdd; }
.idle { color: #777; }
"""

_SCRIPT = """
"use strict";
const POLL_MS = @POLL_MS@;
const STATES = ["PROXY_HEADER", "HANDSHAKING", "READING_HEADERS", "AUTHENTICATING",
  "WRITING_CONTINUE", "READING_BODY", "PREPARING", "WRITING_HEADERS", "STREAMING_FILE",
  "LINGERING"];
const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n).toLocaleString("en");

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  n = Number(n);
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function secs(s) {
  s = Number(s);
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function spark(canvas, values, label, unit) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(1e-9, ...values);
  ctx.strokeStyle = "#1a73e8";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / Math.max(1, values.length - 1)) * (w - 2) + 1;
    const y = h - 2 - (Number(v) / top) * (h - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  const last = values.length > 1 ? values[values.length - 2] : 0;
  label.textContent = fmt(last) + unit + " last second, max " + fmt(top) + unit + " (60 s)";
}

function draw(doc) {
  const c = doc.connections;
  $("worker").textContent = "worker " + doc.worker + ", up " + secs(doc.uptime_s);
  $("open").textContent = fmt(c.open);
  $("requests").textContent = fmt(doc.requests.total);
  $("served").textContent = bytes(doc.bytes_served);
  $("iterations").textContent = fmt(doc.loop.iterations);
  $("timers").textContent = fmt(doc.timers_pending);
  const classes = Object.entries(doc.requests.by_class).map(([k, v]) => k + " " + fmt(v));
  $("classes").textContent = classes.join(", ");
  const states = Object.entries(c.by_state).map(([k, v]) => k + " " + fmt(v));
  $("summary").textContent = fmt(c.open) + " open (" + (states.join(", ") || "none") +
    "); showing " + fmt(c.shown) + (c.left_out ? ", " + fmt(c.left_out) +
    " more not listed (idle and newest last)" : "");
  spark($("rps"), doc.recent.requests_per_second, $("rps-label"), " req/s");
  spark($("iter"), doc.recent.iteration_max_ms, $("iter-label"), " ms");
  const rows = [];
  for (const r of c.rows.slice(0, 200)) {
    const tr = document.createElement("tr");
    tr.className = "st-" + (STATES.includes(r.state) ? r.state : "other");
    if (r.request === null && r.state === "READING_HEADERS") tr.classList.add("idle");
    cell(tr, "#" + r.number, "num");
    cell(tr, r.peer);
    cell(tr, r.state);
    cell(tr, secs(r.age_s), "num");
    cell(tr, secs(r.in_state_s), "num");
    cell(tr, bytes(r.bytes_in), "num");
    cell(tr, bytes(r.bytes_out), "num");
    cell(tr, r.waits_for);
    const p = r.progress;
    cell(tr, p ? (p.total ? (100 * p.sent / p.total).toFixed(1) + "% of " + bytes(p.total)
      : bytes(p.sent)) : "", "num");
    cell(tr, r.request === null ? "" : r.request, "req").title = r.request || "";
    rows.push(tr);
  }
  $("rows").replaceChildren(...rows);
}

async function poll() {
  try {
    const resp = await fetch("status.json", {cache: "no-store"});
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    draw(await resp.json());
    $("status").textContent = "live, every " + POLL_MS + " ms";
    $("status").className = "";
  } catch (e) {
    $("status").textContent = "no answer from the server (" + e.message + "), retrying";
    $("status").className = "down";
  }
  setTimeout(poll, POLL_MS);
}
poll();
""".replace("@POLL_MS@", str(POLL_MS))


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


CSP = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_hash(_SCRIPT)}",
        f"style-src {_hash(_STYLE)}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>evloop_httpd status</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>evloop_httpd: the loop at work</h1>
<p><span id="worker"></span> &middot; <span id="status">waiting for the first answer</span></p>
<div class="totals">
<div>open connections<b id="open">-</b></div>
<div>requests<b id="requests">-</b></div>
<div>bytes served<b id="served">-</b></div>
<div>loop iterations<b id="iterations">-</b></div>
<div>timers pending<b id="timers">-</b></div>
</div>
<p>by status class: <span id="classes"></span></p>
<div class="spark">requests per second
<canvas id="rps" width="240" height="48"></canvas><span id="rps-label"></span></div>
<div class="spark">slowest loop iteration per second
<canvas id="iter" width="240" height="48"></canvas><span id="iter-label"></span></div>
<p id="summary"></p>
<table>
<thead><tr><th>#</th><th>peer</th><th>state</th><th>age</th><th>in state</th><th>in</th>
<th>out</th><th>waits for</th><th>progress</th><th>request</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<script>{_SCRIPT}</script>
</body>
</html>
""".encode()

HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", CSP),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
JSON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)
