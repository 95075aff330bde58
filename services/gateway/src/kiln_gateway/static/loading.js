// Loading page: follows the request's event stream, shows phases and the log, then opens the server.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("kiln-config").textContent);
  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const order = ["waiting", "building", "pushing", "launching"];
  const barOf = { waiting: "waiting", fetching: "waiting", building: "building", pushing: "pushing", built: "pushing", launching: "launching" };
  const favicon = $("favicon");

  function setIcon(name) { favicon.href = cfg.base + "favicon" + (name ? "_" + name : "") + ".svg"; }

  function showPhase(phase) {
    const reached = order.indexOf(barOf[phase]);
    document.querySelectorAll(".progress .bar").forEach((bar) => {
      bar.classList.toggle("on", order.indexOf(bar.dataset.phase) <= reached);
    });
    $("phase").textContent = phase.charAt(0).toUpperCase() + phase.slice(1) + "…";
    document.body.dataset.phase = phase;
    if (["building", "pushing", "launching"].includes(phase)) setIcon("building");
  }

  function append(text) {
    if (!text) return;
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(text.endsWith("\n") ? text : text + "\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  // Where to send the browser once the server is ready: the server URL from the ready event with
  // the path asked for resolved against it. The result must stay on that server's origin, and
  // under its path too (other users' servers share the hub's origin, and the URL carries the
  // token). The gateway refuses paths that leave the server; this is the second lock, in the
  // parser that counts: the browser's own, which reads "\\host", " //host" and "/\\host" as other
  // hosts and "%2e%2e" as "..". Returns null when the URL would go anywhere else.
  function serverUrl(data) {
    let server;
    try {
      server = new URL(String(data.url || ""));
    } catch (e) {
      return null;  // not an absolute URL
    }
    if (server.protocol !== "https:" && server.protocol !== "http:") return null;
    if (!server.pathname.endsWith("/")) server.pathname += "/";
    let url;
    try {
      url = new URL(String(cfg.urlpath || ""), server);
    } catch (e) {
      return null;
    }
    if (url.origin !== server.origin || !url.pathname.startsWith(server.pathname)) return null;
    if (data.token) url.searchParams.set("token", data.token);
    return url;
  }

  function fail(message) {
    document.body.dataset.phase = "failed";
    $("status-title").textContent = "Launching your Binder failed!";
    $("phase").textContent = "Failed. See the logs below.";
    $("failure").textContent = message || "The launch failed.";
    $("failure").hidden = false;
    $("log-box").open = true;
    document.querySelectorAll(".progress .bar").forEach((bar) => bar.classList.add("failed"));
    setIcon("fail");
  }

  const source = new EventSource(cfg.buildUrl);
  source.onmessage = (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch (e) { return; }
    const phase = (data.phase || "").toLowerCase();
    if (phase === "failed") { source.close(); append(data.message); fail(data.message); return; }
    if (phase) showPhase(phase);
    if (phase === "ready") {
      source.close();
      setIcon("success");
      $("status-title").textContent = "Your Binder is ready";
      const target = serverUrl(data);
      if (target === null) {
        fail("Kiln did not open the server: the address to open is outside your server.");
        return;
      }
      append("Server ready at " + target.origin + target.pathname + "\n");
      window.location.assign(target.href);
      return;
    }
    if (phase !== "pushing") append(data.message);
  };
  // The browser reconnects by itself, sending Last-Event-ID; Kiln resumes the same launch.
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) fail("The connection to Kiln was closed."); };
})();
