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

  function serverUrl(data) {
    const url = new URL(cfg.urlpath || "", data.url.endsWith("/") ? data.url : data.url + "/");
    if (data.token) url.searchParams.set("token", data.token);
    return url.toString();
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
      append("Server ready at " + data.url + "\n");
      window.location.assign(serverUrl(data));
      return;
    }
    if (phase !== "pushing") append(data.message);
  };
  // The browser reconnects by itself, sending Last-Event-ID; Kiln resumes the same launch.
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) fail("The connection to Kiln was closed."); };
})();
