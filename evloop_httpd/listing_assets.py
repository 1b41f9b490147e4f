"""The inline CSS and JavaScript of an HTML listing, and the Content-Security-Policy that
allows exactly them.

Theory of operation: a listing page loads nothing from anywhere (no external asset, so it
works offline and leaks no request). Its one ``<style>`` and one ``<script>`` are constants,
so the policy names them by hash (CSP Level 2: ``'sha256-<base64>'`` of the element's exact
text), computed once at import. Hashes rather than a per-response nonce because pages are
cached and revalidated by ETag: a nonce would make every response different. No inline event
handler attribute is used (a hash does not allow those), and the script never receives a
file name from the page's markup as code: it reads the DOM and writes names with
``textContent`` only, so no name is ever parsed as HTML or JavaScript.

What the script adds, when the page has an upload form (``id="upload"``): the form's files
are sent one XMLHttpRequest each (two at a time), to the form's ``action`` with
``Accept: application/json``, each with a progress bar and a message saying how it ended;
files dropped anywhere on the page go the same way. Without JavaScript the form posts as is.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
body{font:16px/1.4 system-ui,sans-serif;margin:0 auto;padding:.5em 1em;max-width:60em}
h1{font-size:1.3em;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
th,td{padding:.3em .6em;text-align:left;vertical-align:top}
tr:nth-child(even) td{background:#f3f3f3}
td.name{overflow-wrap:anywhere}
.size,.date{text-align:right;white-space:nowrap}
th a{color:inherit}
a:focus-visible,button:focus-visible,input:focus-visible{outline:3px solid #1a5fb4}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
fieldset{margin:1em 0;border:1px solid #999}
#drop{border:2px dashed #999;padding:.6em;margin:.5em 0}
#drop.over{border-color:#1a5fb4;background:#e8f0fb}
#progress{list-style:none;padding:0}
#progress li{margin:.3em 0;overflow-wrap:anywhere}
#progress progress{width:10em;max-width:40%;vertical-align:middle}
#progress .failed{color:#a51d2d;font-weight:bold}
@media (max-width:40em){body{padding:.3em}th,td{padding:.3em}.date{font-size:.8em}}
"""

SCRIPT = """
(function () {
  "use strict";
  var form = document.getElementById("upload");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  var input = document.getElementById("files");
  var overwrite = document.getElementById("overwrite");
  var list = document.getElementById("progress");
  var drop = document.getElementById("drop");
  var WHY = {
    401: "an account is needed: reload the page and sign in",
    403: "not allowed here",
    409: "a file or folder of that name exists (tick Overwrite to replace a file)",
    413: "too large for this server",
    507: "the server has no room left"
  };
  var queue = [], running = 0, pending = 0, failed = 0;
  function say(node, text) { node.textContent = text; }
  function add(file) {
    var li = document.createElement("li");
    var name = document.createElement("span");
    var bar = document.createElement("progress");
    var status = document.createElement("span");
    say(name, file.name + " ");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", file.name);
    say(status, " waiting");
    li.appendChild(name);
    li.appendChild(bar);
    li.appendChild(status);
    list.appendChild(li);
    queue.push({ file: file, bar: bar, status: status, li: li });
    pending += 1;
    pump();
  }
  function pump() {
    while (running < 2 && queue.length) send(queue.shift());
  }
  function finish(job, ok, text) {
    running -= 1;
    pending -= 1;
    say(job.status, " " + text);
    job.li.className = ok ? "ok" : "failed";
    if (!ok) failed += 1;
    pump();
    if (pending === 0) {
      if (failed === 0) window.location.reload();
      else say(document.getElementById("summary"),
        "Some files failed (see above); reload the page to see the ones that arrived.");
    }
  }
  function detail(xhr) {
    var text = xhr.responseText || "";
    try {
      var doc = JSON.parse(text);
      if (doc && typeof doc.error === "string") return doc.error;
    } catch (e) { /* not JSON: the text itself */ }
    return text.trim().split("\\n").pop().slice(0, 200);
  }
  function send(job) {
    running += 1;
    var xhr = new XMLHttpRequest();
    var data = new FormData();
    if (overwrite.checked) data.append("overwrite", "1");
    data.append("file", job.file, job.file.name);
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable && e.total > 0) job.bar.value = Math.floor(100 * e.loaded / e.total);
    });
    xhr.addEventListener("load", function () {
      if (xhr.status >= 200 && xhr.status < 300) {
        job.bar.value = 100;
        finish(job, true, "done");
      } else {
        finish(job, false, "failed (" + xhr.status + "): " + (WHY[xhr.status] || detail(xhr)));
      }
    });
    xhr.addEventListener("error", function () {
      finish(job, false, "failed: the connection broke (network error, or the server closed it)");
    });
    xhr.addEventListener("abort", function () { finish(job, false, "cancelled"); });
    say(job.status, " uploading");
    xhr.send(data);
  }
  function addAll(files) {
    for (var i = 0; i < files.length; i += 1) add(files[i]);
  }
  form.addEventListener("submit", function (e) {
    if (!input.files || !input.files.length) return;
    e.preventDefault();
    addAll(input.files);
    input.value = "";
  });
  drop.hidden = false;
  var depth = 0;
  document.addEventListener("dragenter", function (e) {
    e.preventDefault();
    depth += 1;
    drop.className = "over";
  });
  document.addEventListener("dragover", function (e) { e.preventDefault(); });
  document.addEventListener("dragleave", function () {
    depth -= 1;
    if (depth <= 0) { depth = 0; drop.className = ""; }
  });
  document.addEventListener("drop", function (e) {
    e.preventDefault();
    depth = 0;
    drop.className = "";
    if (e.dataTransfer && e.dataTransfer.files) addAll(e.dataTransfer.files);
  });
})();
"""


def csp_hash(text: str) -> str:
    """The CSP source expression allowing an inline element whose text is ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


# Nothing but the two inline blocks: no other script, style, image, font, frame or plugin;
# forms and XHR only to this site; no <base> to redirect relative links; not framed.
CSP = (
    "default-src 'none'; "
    f"style-src {csp_hash(STYLE)}; "
    f"script-src {csp_hash(SCRIPT)}; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
).encode("ascii")

# Sent with every listing (see handler.py): the policy, no MIME sniffing, and no Referer from
# the links of a listing (a folder's path can itself be private).
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Security-Policy", CSP),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
)
