// The mirror's dashboard: polls /api/dashboard and redraws. No dependencies, no network
// beyond the mirror. Text from clients or upstreams (repository names, error messages) is
// only ever set with textContent, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const IMAGES_REFRESH_MS = 15000; // the list reads the cache's metadata: less often than the counters
const SVG_NS = "http://www.w3.org/2000/svg";

function $(id) {
  return document.getElementById(id);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function setText(id, text) {
  $(id).textContent = text;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return value.toFixed(digits) + " " + units[unit];
}

function count(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n));
}

function rate(n) {
  if (n === 0) return "0";
  if (n < 10) return n.toFixed(n < 1 ? 2 : 1);
  return count(n);
}

function percent(fraction) {
  return (fraction * 100).toFixed(1) + "%";
}

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
}

function ago(timestamp, now) {
  return timestamp ? duration(now - timestamp) + " ago" : "never";
}

// Charts: inline SVG, redrawn at the container's size on every refresh.

function niceMax(value, base) {
  // A round axis maximum; for bytes, round in the unit the label will use (KiB, MiB…).
  if (value <= 0) return 1;
  let unit = 1;
  if (base === 1024) while (value / unit >= 1024) unit *= 1024;
  const scaled = value / unit;
  const magnitude = Math.pow(10, Math.floor(Math.log10(scaled)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (scaled <= step * magnitude) return step * magnitude * unit;
  }
  return 10 * magnitude * unit;
}

function drawChart(container, samples, now, lines, format, base) {
  const width = Math.max(container.clientWidth, 200);
  const height = Math.max(container.clientHeight, 120);
  const left = 64;
  const right = 10;
  const top = 8;
  const bottom = 22;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const oldest = samples.length ? samples[0].t - samples[0].seconds : now;
  const span = Math.min(3600, Math.max(60, now - oldest));
  const x = (t) => left + plotW * (1 - (now - t) / span);
  let max = 0;
  for (const line of lines) for (const s of samples) max = Math.max(max, line.value(s));
  max = niceMax(max, base);
  const y = (v) => top + plotH * (1 - v / max);

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  for (const fraction of [0, 0.5, 1]) {
    const gy = y(max * fraction);
    root.appendChild(svg("line", { x1: left, x2: width - right, y1: gy, y2: gy, class: "grid-line" }));
    const label = svg("text", { x: left - 8, y: gy + 4, "text-anchor": "end", class: "axis-label" });
    label.textContent = format(max * fraction);
    root.appendChild(label);
  }
  for (const [fraction, anchor] of [[0, "start"], [0.5, "middle"], [1, "end"]]) {
    const label = svg("text", { x: left + plotW * fraction, y: height - 6, "text-anchor": anchor, class: "axis-label" });
    label.textContent = fraction === 1 ? "now" : "−" + duration(span * (1 - fraction));
    root.appendChild(label);
  }
  // Each sample is the rate over its interval: drawn as a step, flat across the interval.
  for (const line of lines) {
    if (!samples.length) break;
    const points = [];
    for (const s of samples) {
      const value = y(line.value(s));
      points.push([x(Math.max(s.t - s.seconds, now - span)), value], [x(s.t), value]);
    }
    const path = points.map(([px, py], i) => (i ? "L" : "M") + px.toFixed(1) + " " + py.toFixed(1)).join(" ");
    const first = points[0][0].toFixed(1);
    const last = points[points.length - 1][0].toFixed(1);
    root.appendChild(
      svg("path", { d: `M${first} ${y(0)} ${path.replace(/^M/, "L")} L${last} ${y(0)} Z`, fill: line.color, "fill-opacity": 0.14, stroke: "none" })
    );
    root.appendChild(
      svg("path", { d: path, fill: "none", stroke: line.color, "stroke-width": 2, "stroke-linejoin": "round" })
    );
  }
  container.replaceChildren(root);
}

// The sections.

function renderKpis(data) {
  const stats = data.stats;
  setText("hit-ratio", data.hit_ratio === null ? "–" : percent(data.hit_ratio));
  setText("hit-detail", `${count(data.hits)} hits · ${count(data.misses)} misses`);
  setText("bytes-saved", bytes(data.bytes_saved));
  setText("saved-detail", `served from cache · ${bytes(stats.bytes_fetched_from_upstream)} from upstream`);
  const cache = data.cache;
  const bar = $("cache-bar");
  if (cache.max_bytes) {
    bar.parentElement.hidden = false;
    setText("cache-use", percent(cache.used_fraction));
    setText("cache-detail", `${bytes(cache.used_bytes)} of ${bytes(cache.max_bytes)} · ${count(cache.blobs)} blobs`);
    bar.style.width = Math.min(100, cache.used_fraction * 100).toFixed(1) + "%";
    bar.className = "bar-fill" + (cache.used_fraction > 0.95 ? " bad" : cache.used_fraction > 0.8 ? " warn" : "");
  } else {
    setText("cache-use", bytes(cache.used_bytes));
    setText("cache-detail", `${count(cache.blobs)} blobs · no size limit`);
    bar.style.width = "0";
    bar.parentElement.hidden = true;
  }
  setText("requests", count(stats.requests));
  const recent = data.series.slice(-13).filter((s) => s.seconds > 0);
  const seconds = recent.reduce((sum, s) => sum + s.seconds, 0);
  const perSecond = seconds ? recent.reduce((sum, s) => sum + s.requests, 0) / seconds : 0;
  setText("requests-detail", `${rate(perSecond)}/s last minute · ${stats.inflight_downloads} downloading`);
}

function renderCharts(data) {
  // The interval under way is shown once it is long enough not to make a spike.
  const samples = data.series.filter((s, i) => i < data.series.length - 1 || s.seconds >= 1);
  const perSecond = (key) => (s) => (s.seconds > 0 ? s[key] / s.seconds : 0);
  const style = getComputedStyle(document.documentElement);
  const color = (name) => style.getPropertyValue(name).trim();
  drawChart(
    $("chart-requests"),
    samples,
    data.now,
    [
      { value: perSecond("requests"), color: color("--accent") },
      { value: perSecond("hits"), color: color("--good") },
    ],
    (v) => rate(v) + "/s",
    10
  );
  drawChart(
    $("chart-bandwidth"),
    samples,
    data.now,
    [
      { value: perSecond("bytes_from_upstream"), color: color("--upstream") },
      { value: perSecond("bytes_from_cache"), color: color("--cache") },
    ],
    (v) => bytes(v) + "/s",
    1024
  );
}

function renderRepositories(rows) {
  const body = $("repositories").tBodies[0];
  const max = rows.length ? rows[0].requests : 1;
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = el("tr");
      const name = el("td");
      const label = el("div", "repo-name");
      label.title = `${row.upstream}/${row.repository}`;
      label.appendChild(el("span", "repo-upstream", row.upstream + "/"));
      label.appendChild(el("span", "repo-repository", row.repository));
      name.appendChild(label);
      const bar = el("div", "repo-bar");
      bar.style.width = ((100 * row.requests) / max).toFixed(1) + "%";
      name.appendChild(bar);
      tr.appendChild(name);
      tr.appendChild(el("td", "num", count(row.requests)));
      return tr;
    })
  );
  $("repositories").hidden = rows.length === 0;
  $("repositories-empty").hidden = rows.length > 0;
}

function renderInflight(downloads) {
  $("inflight").replaceChildren(
    ...downloads.map((d) => {
      const li = el("li");
      const head = el("div", "row-head");
      head.appendChild(el("span", "row-title mono", d.digest.replace(/^sha256:/, "").slice(0, 16) + "…"));
      const fraction = d.size ? d.received / d.size : null;
      const amount = d.size ? `${bytes(d.received)} of ${bytes(d.size)}` : `${bytes(d.received)}`;
      head.appendChild(el("span", "muted small", fraction === null ? amount : `${percent(fraction)} · ${amount}`));
      li.appendChild(head);
      li.title = d.digest;
      const bar = el("div", "bar");
      const fill = el("div", "bar-fill");
      fill.style.width = fraction === null ? "100%" : (Math.min(1, fraction) * 100).toFixed(1) + "%";
      if (fraction === null) fill.style.opacity = "0.35";
      bar.appendChild(fill);
      li.appendChild(bar);
      return li;
    })
  );
  $("inflight-empty").hidden = downloads.length > 0;
}

function renderUpstreams(upstreams, now) {
  $("upstreams").replaceChildren(
    ...upstreams.map((u) => {
      const li = el("li");
      const head = el("div", "row-head");
      head.appendChild(el("span", "row-title", u.name));
      head.appendChild(el("span", "pill pill-" + u.status, u.status));
      li.appendChild(head);
      li.appendChild(el("div", "muted small mono", `${u.url} · ${u.route}`));
      let detail = `last answer ${ago(u.last_success, now)}`;
      if (u.consecutive_failures) {
        detail += ` · ${u.consecutive_failures} ${u.consecutive_failures === 1 ? "failure" : "failures in a row"}`;
      }
      li.appendChild(el("div", "muted small", detail));
      const pulls = u.name === "docker.io" ? " (what Docker Hub counts as pulls)" : "";
      li.appendChild(el("div", "muted small", `${u.requests} requests · ${u.manifest_gets} manifest GETs${pulls}`));
      if (u.quota) li.appendChild(quotaLine(u.quota, now));
      for (const m of u.mirrors) {
        const line = el("div", "small mono", `via mirror ${m.url}: ${m.status}`);
        if (m.status === "down" || m.status === "degraded") line.classList.add("warn-text");
        li.appendChild(line);
      }
      if (u.offline) li.appendChild(el("div", "small warn-text", "offline: never dialled, only the cache answers"));
      if (u.last_error_message) {
        li.appendChild(el("div", "error-text", `${ago(u.last_error, now)}: ${u.last_error_message}`));
      }
      return li;
    })
  );
}

function quotaLine(q, now) {
  const window = q.window_seconds ? ` per ${duration(q.window_seconds)}` : "";
  const left = q.remaining === null ? "?" : q.remaining;
  const of = q.limit === null ? "" : ` of ${q.limit}`;
  const source = q.source ? ` · counted against ${q.source}` : "";
  const line = el("div", "small quota", `pull quota: ${left} left${of}${window}${source} (${ago(q.seen_at, now)})`);
  if (q.limit && q.remaining !== null && q.remaining < q.limit * 0.1) line.classList.add("warn-text");
  return line;
}

function renderWarnings(warnings) {
  $("warnings").replaceChildren(...warnings.map((w) => el("li", "warning", w)));
  $("warnings").hidden = warnings.length === 0;
}

function renderFleet(fleet) {
  $("fleet-card").hidden = !fleet;
  if (!fleet) return;
  const redis = $("fleet-redis");
  redis.textContent = "redis " + fleet.redis;
  redis.className = "pill " + (fleet.redis === "up" ? "pill-ok" : "pill-down");
  const rows = fleet.replicas.map((r) => {
    const tr = el("tr");
    tr.appendChild(el("td", "mono", r.peer_url));
    tr.appendChild(el("td", "num", count(r.blobs || 0)));
    tr.appendChild(el("td", "num", bytes(r.bytes || 0)));
    tr.appendChild(el("td", "num", count(r.requests || 0)));
    tr.appendChild(el("td", "num", r.hit_ratio === null || r.hit_ratio === undefined ? "–" : percent(r.hit_ratio)));
    return tr;
  });
  const total = el("tr", "total");
  total.appendChild(el("td", "", `${fleet.totals.replicas} replicas`));
  total.appendChild(el("td", "num", count(fleet.totals.blobs)));
  total.appendChild(el("td", "num", bytes(fleet.totals.bytes)));
  total.appendChild(el("td", "num", count(fleet.totals.requests)));
  total.appendChild(el("td", "num", ""));
  $("fleet").tBodies[0].replaceChildren(...rows, total);
}

function render(data) {
  renderWarnings(data.warnings);
  renderKpis(data);
  renderCharts(data);
  renderRepositories(data.top_repositories);
  renderInflight(data.inflight);
  renderUpstreams(data.upstreams, data.now);
  renderFleet(data.fleet);
  const state = $("state");
  state.textContent = "live";
  state.className = "pill pill-ok";
  setText("updated", `up ${duration(data.stats.uptime_seconds)} · updated ${new Date(data.now * 1000).toLocaleTimeString()}`);
}

async function refresh() {
  try {
    const response = await fetch("/api/dashboard", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    const state = $("state");
    state.textContent = "unreachable";
    state.className = "pill pill-down";
    setText("updated", String(error.message || error));
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

// The images the mirror holds, from /api/images, filtered in the page.

let images = [];

function imageText(row) {
  const flags = [row.pinned ? "pinned" : "", row.pin_state === "fetching" ? "fetching" : "", row.complete ? "" : "partial", row.moves ? "moved" : "", row.signature || ""];
  return [row.upstream + "/" + row.repository + ":" + row.tag, row.digest, row.artifact_type || "", ...row.platforms, ...flags]
    .join(" ")
    .toLowerCase();
}

function renderImages() {
  const words = $("images-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = images.filter((row) => words.every((word) => imageText(row).includes(word)));
  const now = Date.now() / 1000;
  $("images").tBodies[0].replaceChildren(
    ...shown.map((row) => {
      const tr = el("tr");
      const name = el("td");
      const label = el("div", "image-name");
      label.title = `${row.upstream}/${row.repository}:${row.tag}\n${row.digest}`;
      label.appendChild(el("span", "repo-upstream", row.upstream + "/"));
      label.appendChild(el("span", "image-repository", row.repository));
      label.appendChild(el("span", "image-tag", ":" + row.tag));
      name.appendChild(label);
      tr.appendChild(name);
      // An artifact (a signature, an SBOM, a chart) shows what it is where an image shows its platforms.
      if (row.artifact_type) tr.appendChild(el("td", "artifact-type", row.artifact_type));
      else tr.appendChild(el("td", "image-platforms", row.platforms.join(", ") || "–"));
      const size = el("td", "num", bytes(row.size));
      if (!row.complete) {
        size.appendChild(el("span", "partial", "partial"));
        size.title = `${bytes(row.cached_size)} of ${bytes(row.size)} cached`;
      }
      tr.appendChild(size);
      tr.appendChild(el("td", "when muted small", ago(Date.parse(row.last_pull) / 1000, now)));
      const moved = el("td", row.moves ? "num" : "num muted", row.moves ? `${row.moves}×` : "–");
      if (row.moves) moved.title = `${row.moves} other digest(s) seen for this tag before: mirror history`;
      tr.appendChild(moved);
      const signature = row.signature || "-";
      const verdict = el("td", signature === "-" ? "muted small" : signature.startsWith("verified") ? "small signed" : "small refused", signature === "-" ? "–" : signature);
      if (row.signature_reason) verdict.title = row.signature_reason;
      tr.appendChild(verdict);
      // A pin the server is still bringing in says so until the last blob is cached.
      const pin = row.pin_state === "fetching" ? "fetching" : row.pinned ? "pinned" : "–";
      tr.appendChild(el("td", row.pinned ? "flag pinned" : "flag muted", pin));
      return tr;
    })
  );
  $("images").hidden = shown.length === 0;
  const empty = $("images-empty");
  empty.hidden = shown.length > 0;
  empty.textContent = images.length ? "No image matches the filter." : "Nothing cached yet.";
}

async function refreshImages() {
  try {
    const response = await fetch("/api/images", { cache: "no-store" });
    if (response.ok) {
      images = await response.json();
      renderImages();
    }
  } finally {
    setTimeout(refreshImages, IMAGES_REFRESH_MS);
  }
}

$("images-filter").addEventListener("input", renderImages);
refresh();
refreshImages();
