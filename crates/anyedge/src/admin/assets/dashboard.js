// anyedge dashboard: reads the node's live stream (server-sent events over fetch, so a
// bearer token can ride in the Authorization header) and redraws from each whole picture.
// No framework, nothing fetched from elsewhere; every value goes in through textContent.
"use strict";
(function () {
  const ownerMatch = location.pathname.match(/^\/apps\/([^/]+)$/);
  const owner = ownerMatch ? decodeURIComponent(ownerMatch[1]) : null;
  const streamUrl = owner
    ? "/v1/apps/" + encodeURIComponent(owner) + "/status/stream"
    : "/v1/status/stream";
  const tokenKey = "anyedge-token:" + (owner || "/");
  const $ = (id) => document.getElementById(id);
  const HISTORY = 120; // points per app in the sparkline (one per picture)
  const series = new Map(); // app -> [{t, total}]
  let retryMs = 1000;
  let lastPicture = 0;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "width") e.style.width = v; // CSSOM: allowed by the page's CSP

      else e.setAttribute(k, String(v));
    }
    for (const k of kids) {
      if (k === null || k === undefined) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }
  const fmt = (n, d) => (n === null || n === undefined ? "–" : Number(n).toFixed(d === undefined ? 0 : d));
  const lim = (n) => (n === null || n === undefined ? "∞" : String(n));
  function bytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function replace(id, ...kids) {
    const e = $(id);
    e.replaceChildren(...kids);
  }
  function table(id, head, rows) {
    const t = $(id);
    const hr = el("tr", {}, ...head.map((h) => el("th", { class: h.endsWith("#") ? "num" : "" }, h.replace(/#$/, ""))));
    t.replaceChildren(el("thead", {}, hr), el("tbody", {}, ...rows));
  }
  function figure(cls, value, label) {
    return el("span", { class: "figure " + cls }, el("b", {}, value), el("span", {}, label));
  }

  function spark(app, total, t) {
    let s = series.get(app);
    if (!s) { s = []; series.set(app, s); }
    s.push({ t, total });
    while (s.length > HISTORY) s.shift();
    const rates = [];
    for (let i = 1; i < s.length; i++) {
      const dt = (s[i].t - s[i - 1].t) / 1000;
      rates.push(dt > 0 ? Math.max(0, s[i].total - s[i - 1].total) / dt : 0);
    }
    const max = Math.max(1, ...rates);
    const pts = rates.map((r, i) => ((i / Math.max(1, HISTORY - 2)) * 100).toFixed(1) + "," + (20 - (r / max) * 18).toFixed(1)).join(" ");
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 21");
    svg.setAttribute("preserveAspectRatio", "none");
    const line = document.createElementNS(svgNs, "polyline");
    line.setAttribute("points", pts);
    svg.append(line);
    const now = rates.length ? rates[rates.length - 1] : 0;
    return el("span", { class: "figure" }, svg, el("b", { class: "rate-now" }, fmt(now, 1)), el("span", {}, "req/s now"));
  }

  function bar(inflight, soft, hard) {
    const cap = hard || soft || Math.max(1, inflight);
    const w = Math.min(100, (inflight / cap) * 100);
    const cls = hard && inflight >= hard ? "hard" : soft && inflight >= soft ? "soft" : "";
    return el("span", { class: "bar", title: inflight + " in flight, soft " + lim(soft) + ", hard " + lim(hard) },
      el("i", { class: cls, width: w.toFixed(0) + "%" }));
  }

  function instanceRow(i) {
    const cls = i.healthy ? "" : "bad";
    return el("tr", { "data-instance": i.id, "data-healthy": i.healthy, "data-health": i.health },
      el("td", {}, el("span", { class: "dot " + cls }), i.id),
      el("td", {}, i.region), el("td", {}, i.node), el("td", {}, i.state),
      el("td", { class: "health" }, i.health),
      el("td", { class: "num inflight" }, i.inflight),
      el("td", {}, bar(i.inflight, i.soft_limit, i.hard_limit), " ", lim(i.soft_limit) + "/" + lim(i.hard_limit)),
      el("td", { class: "num" }, i.rtt_ms === null ? "–" : fmt(i.rtt_ms, 2) + " ms"),
      el("td", { class: "num" }, i.load_feed_age_ms === null ? "–" : fmt(i.load_feed_age_ms / 1000, 1) + " s"));
  }

  function appCard(a, t) {
    const w = a.window || {};
    const lat = w.latency_ms || {};
    const r = a.responses;
    const errors = Object.entries(a.errors).map(([k, v]) => k + " " + v).join(", ");
    const codes = Object.entries(a.status_codes).map(([k, v]) => k + ": " + v).join("  ");
    const allHealthy = a.instances_healthy === a.instances.length;
    const head = el("div", { class: "app-head" },
      el("h3", {}, el("span", { class: "dot " + (a.instances_healthy === 0 && a.instances.length ? "bad" : allHealthy ? "" : "warn") }), a.name),
      figure("requests", a.requests_total, "requests"),
      spark(a.name, a.requests_total + a.tcp_connects_total, t),
      figure("rate", fmt(w.requests_per_second, 2), "req/s (1 min)"),
      figure("latency", fmt(lat.p50, 1) + " / " + fmt(lat.p90, 1) + " / " + fmt(lat.p99, 1), "ms p50/p90/p99"),
      figure("r2xx", r["2xx"], "2xx"), figure("r4xx", r["4xx"], "4xx"), figure("r5xx", r["5xx"], "5xx"),
      figure("tcp", a.tcp_connects_total, "tcp conns"),
      figure("inflight", a.inflight + "/" + lim(a.max_inflight), "in flight"),
      figure("queued", a.queued, "queued"),
      figure("healthy", a.instances_healthy + "/" + a.instances.length, "healthy"));
    const rows = a.instances.map(instanceRow);
    const t2 = el("table", { class: "instances" },
      el("thead", {}, el("tr", {}, ...["instance", "region", "node", "state", "health", "in flight", "limit soft/hard", "RTT", "feed age"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
    const extra = el("div", { class: "dim" },
      a.hostnames.join(", "), " · ", bytes(a.bytes_in), " in, ", bytes(a.bytes_out), " out",
      codes ? " · " + codes : "", errors ? " · errors: " + errors : "");
    return el("div", { class: "app", "data-app": a.name, "data-requests": a.requests_total }, head, extra, t2);
  }

  function drawRegions(regions) {
    replace("regions", ...regions.map((r) => el("div", { class: "region", "data-region": r.name },
      el("h3", {}, r.name, r.lat !== null ? el("span", { class: "dim" }, " " + fmt(r.lat, 1) + ", " + fmt(r.lon, 1)) : null),
      ...r.nodes.map((n) => el("div", { class: "node" + (n.self ? " self" : ""), "data-node": n.id },
        el("span", { class: "dot " + (n.instances && n.healthy < n.instances ? (n.healthy ? "warn" : "bad") : "") }),
        n.id + (n.self ? " (this node)" : ""),
        el("div", { class: "dim" }, n.instances + " instances, " + n.healthy + " healthy",
          n.rtt_ms !== null ? " · RTT " + fmt(n.rtt_ms, 2) + " ms" : "",
          n.load_feed_age_ms !== null ? " · feed " + fmt(n.load_feed_age_ms / 1000, 1) + " s ago" : ""))))));
  }

  function drawCerts(certs) {
    table("certs", ["hostname", "app", "source", "expires", "in days#", "ACME"], certs.map((c) => el("tr", { "data-cert": c.hostname },
      el("td", {}, c.hostname), el("td", {}, c.app || "–"), el("td", {}, c.source),
      el("td", {}, c.not_after ? new Date(c.not_after * 1000).toISOString().slice(0, 10) : "–"),
      el("td", { class: "num" }, c.expires_in_days === null ? "–" : fmt(c.expires_in_days, 1)),
      el("td", { class: c.acme === "failing" ? "bad" : "" }, c.acme || "–",
        c.acme_error ? " (" + c.acme_failures + "×, next " + new Date(c.acme_next_attempt * 1000).toLocaleTimeString() + "): " + c.acme_error : ""))));
  }

  function draw(p) {
    const t = p.time_ms;
    if (!lastPicture) performance.mark("anyedge-first-draw"); // time to first render, for tests
    lastPicture = Date.now();
    $("node").textContent = p.node.id + " · " + p.node.region + (p.node.status && p.node.status !== "ok" ? " · " + p.node.status : "");
    if (owner) {
      $("title").textContent = "· " + p.app.name;
      $("apps-title").textContent = "App";
      replace("apps", appCard(p.app, t));
      drawCerts(p.certificates);
      return;
    }
    drawRegions(p.regions);
    $("apps-title").textContent = p.apps.length < p.apps_total
      ? "Apps (the " + p.apps.length + " busiest of " + p.apps_total + ")"
      : "Apps";
    replace("apps", ...p.apps.map((a) => appCard(a, t)));
    const c = p.catalog;
    const dl = [["store", c.store], ["connected", String(c.connected)], ["stale", fmt(c.stale_seconds, 1) + " s"]];
    if (c.revision !== undefined) dl.push(["revision", c.revision], ["disconnects", c.disconnects], ["graced instances", c.graced_instances], ["last error", c.last_error || "–"]);
    dl.push(["generation", p.node.generation], ["process generation", p.node.process_generation], ["open connections", p.node.open_connections], ["uptime", p.node.uptime_seconds + " s"]);
    replace("catalog", ...dl.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-key": k }, v)]));
    table("listeners", ["address", "kinds", "apps#"], p.listeners.map((l) => el("tr", {}, el("td", {}, l.address), el("td", {}, l.kinds.join(", ")), el("td", { class: "num" }, l.apps))));
    drawCerts(p.certificates);
    table("reloads", ["when", "result", "generation#", "error"], p.reloads.recent.map((r) => el("tr", {},
      el("td", {}, new Date(r.time_ms).toLocaleTimeString()), el("td", {}, r.ok ? "ok" : "failed"),
      el("td", { class: "num" }, r.generation), el("td", {}, r.error || ""))));
    const seen = new Set(p.apps.map((a) => a.name));
    for (const k of series.keys()) if (!seen.has(k)) series.delete(k);
  }

  function status(text, cls) {
    const s = $("live");
    s.textContent = text;
    s.className = "pill " + (cls || "");
  }

  function askToken(message) {
    $("login").hidden = false;
    $("main").hidden = true;
    $("login-label").textContent = owner ? "Bearer token of " + owner : "Operator token";
    $("login-error").textContent = message || "";
    status("locked", "off");
  }

  async function connect() {
    const headers = { Accept: "text/event-stream" };
    const token = sessionStorage.getItem(tokenKey);
    // An owner's view always takes a token: ask for it before asking the node.
    if (owner && !token) return askToken("");
    if (token) headers.Authorization = "Bearer " + token;
    let resp;
    try {
      resp = await fetch(streamUrl, { headers, cache: "no-store" });
    } catch (e) {
      return later("disconnected");
    }
    if (resp.status === 403) {
      sessionStorage.removeItem(tokenKey);
      return askToken(token ? "That token is not accepted." : "");
    }
    if (!resp.ok || !resp.body) return later("error " + resp.status);
    $("login").hidden = true;
    $("main").hidden = false;
    status("live");
    retryMs = 1000;
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const ev = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = ev.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) draw(JSON.parse(data));
        }
      }
    } catch (e) {
      // The node dropped the stream (restart, or this page fell behind): reconnect.
    }
    later("reconnecting");
  }

  function later(why) {
    status(why, "off");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  setInterval(() => {
    if (lastPicture && Date.now() - lastPicture > 5000) status("stale", "bad");
    $("footer").textContent = lastPicture ? "last update " + new Date(lastPicture).toLocaleTimeString() : "";
  }, 1000);

  document.body.classList.toggle("owner", !!owner);
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(tokenKey, $("token").value.trim());
    $("token").value = "";
    connect();
  });
  connect();
})();
