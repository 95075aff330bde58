// Home page: builds the launch URL and badge snippets as the user types, launches on submit.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("kiln-config").textContent);
  const $ = (id) => document.getElementById(id);
  const providers = Object.fromEntries(cfg.providers.map((p) => [p.id, p]));

  function repoPart(p, value) {
    let repo = value.trim();
    if (p.detect) {
      const m = new RegExp(p.detect).exec(repo);
      if (m && m.groups && m.groups.repo) repo = m.groups.repo;
    }
    return p.url_encode ? encodeURIComponent(repo) : repo;
  }

  function launchUrl() {
    const p = providers[$("provider").value];
    const repo = $("repo").value.trim();
    if (!repo) return null;
    let spec = repoPart(p, repo);
    if (p.ref_enabled) spec += "/" + ($("ref").value.trim() || "HEAD");
    let url = cfg.base + "v2/" + p.id + "/" + spec;
    const path = $("path").value.trim();
    if (path) {
      const urlpath = $("path-kind").value === "file" ? "/doc/tree/" + path.replace(/^\/+/, "") : path;
      url += "?urlpath=" + encodeURIComponent(urlpath);
    }
    return url;
  }

  function update() {
    const p = providers[$("provider").value];
    $("repo-label").textContent = p.repo_label;
    $("repo").placeholder = p.placeholder;
    $("ref").disabled = !p.ref_enabled;
    const url = launchUrl();
    $("launch-url").value = url || "";
    const badge = cfg.base + "badge_logo.svg";
    $("badge-md").value = url ? "[![Binder](" + badge + ")](" + url + ")" : "";
    $("badge-rst").value = url ? ".. image:: " + badge + "\n :target: " + url : "";
    $("badge-html").value = url ? '<a href="' + url + '"><img src="' + badge + '" alt="Binder"></a>' : "";
    $("form-error").hidden = true;
  }

  for (const id of ["provider", "repo", "ref", "path", "path-kind"]) {
    $(id).addEventListener("input", update);
    $(id).addEventListener("change", update);
  }
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", () => {
      const field = $(button.dataset.copy);
      field.select();
      if (navigator.clipboard) navigator.clipboard.writeText(field.value);
      button.textContent = "copied";
      setTimeout(() => (button.textContent = "copy"), 1500);
    });
  });
  $("launch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = launchUrl();
    if (!url) {
      $("form-error").textContent = "Enter a repository to launch.";
      $("form-error").hidden = false;
      return;
    }
    $("launch").textContent = "launching...";
    window.location.assign(url);
  });
  update();
})();
