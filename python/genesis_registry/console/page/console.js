// genesis-registry console: one page, no framework. The server pushes every change over
// server-sent events (/api/events); the page fetches a service's leases and probes on demand.
// Every value from etcd reaches the page through textContent, never as HTML.
"use strict";

const EVENTS_SHOWN = 300;
const LEASE_REFRESH_MS = 5000;

const state = {
  about: null,
  services: Object.create(null),  // name -> instance count
  selected: null,      // the service shown
  detail: null,        // {name, instances: [...], stats, fetchedAt}
  probes: {},          // endpoint -> probe result, for the selected service
  stats: null,
  events: [],          // newest first
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function clockTime(iso) {
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

// Ids as people count them: web-2 before web-10.
const collator = new Intl.Collator("en", { numeric: true });
// A total order: ids the collator finds equal ("x-01", "x-1") still sort apart, always the same way.
const compareIds = (a, b) => collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);
const byId = (a, b) => compareIds(a.id, b.id);

function number(value, digits = 0) {
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

// ---- the header ---------------------------------------------------------------------------

function renderAbout() {
  const about = state.about;
  if (!about) return;
  const items = [["namespace", about.namespace], ["etcd", about.endpoints.join(", ")]];
  if (about.user) items.push(["user", about.user]);
  if (about.tls) items.push(["tls", "on"]);
  items.push(["version", about.version]);
  $("about").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v, title: v }))));
}

function setFeedState(name, text) {
  const node = $("feed-state");
  node.dataset.state = name;
  node.textContent = text;
}

// ---- services -----------------------------------------------------------------------------

// Service names are etcd's: kept in an object without a prototype, where "__proto__" or
// "constructor" is a name like any other.
const servicesOf = (counts) => Object.assign(Object.create(null), counts);

function renderServices() {
  const filter = $("filter").value.trim().toLowerCase();
  const names = Object.keys(state.services).sort();
  const total = names.reduce((sum, n) => sum + state.services[n], 0);
  $("service-total").textContent = `${names.length} · ${number(total)} instances`;
  $("no-services").hidden = names.length > 0;
  const items = names
    .filter((n) => n.toLowerCase().includes(filter))
    .map((name) => {
      const count = state.services[name];
      const item = el(
        "li",
        { "data-service": name, "aria-selected": String(name === state.selected), "data-empty": String(count === 0) },
        el("span", { class: "name", text: name, title: name }),
        el("span", { class: "count", text: number(count) }),
      );
      item.addEventListener("click", () => select(name));
      return item;
    });
  $("services").replaceChildren(...items);
}

function select(name) {
  if (state.selected !== name) {
    state.selected = name;
    state.detail = null;
    state.probes = {};
    probeIds = null;
    pendingChanges = [];
    recentChanges = [];
    rows.clear();
    history.replaceState(null, "", `#service=${encodeURIComponent(name)}`);
  }
  renderServices();
  renderService();
  loadService(true);
}

// ---- the selected service -----------------------------------------------------------------

let loading = null;
let loadAgain = false;
let probeWanted = false;  // survives a load that was already under way for another service

async function loadService(probe) {
  const name = state.selected;
  if (!name) return;
  probeWanted = probeWanted || probe;
  if (loading) { loadAgain = true; return; }
  loading = fetch(`/api/services/${encodeURIComponent(name)}`, { credentials: "same-origin" });
  try {
    const answer = await loading;
    if (state.selected !== name) return;
    if (answer.ok) {
      const doc = await answer.json();
      if (state.selected !== name) return;
      const previous = new Set((state.detail?.instances ?? []).map((i) => i.id));
      doc.fetchedAt = performance.now();
      doc.instances.sort(byId);
      // Changes the feed brought while this answer was on its way are newer than it: again on top.
      recentChanges = recentChanges.filter((change) => change.seq > doc.seq);
      mergeChanges(doc, recentChanges);
      doc.fresh = state.detail ? new Set(doc.instances.filter((i) => !previous.has(i.id)).map((i) => i.id)) : new Set();
      state.detail = doc;
      renderService();
      if (probeWanted) {
        probeWanted = false;
        if (doc.instances.length <= AUTO_PROBE_LIMIT) probeSoon("all");
      }
    } else if (answer.status === 404) {
      state.detail = { name, instances: [], gone: true, fetchedAt: performance.now() };
      renderService();
    }
  } catch (error) {
    // The feed's state says whether the server is reachable; the next change loads again.
  } finally {
    loading = null;
    if (loadAgain) { loadAgain = false; loadService(false); }
  }
}

// Probes: every endpoint when a service is opened (up to AUTO_PROBE_LIMIT instances; above
// that, on the button), all of them on the button, and after a change only the instance that
// joined or changed, so a churning mesh is not probed whole on every event.
const AUTO_PROBE_LIMIT = 200;
let probeIds = null;   // waiting to be probed: null, "all", or instance ids
let probeTimer = null;

function probeSoon(ids) {
  probeIds = ids === "all" || probeIds === "all" ? "all" : [...(probeIds ?? []), ...ids];
  if (probeTimer) return;
  probeTimer = setTimeout(() => {
    const wanted = probeIds;
    probeTimer = null;
    probeIds = null;
    probe(wanted);
  }, 100);
}

async function probe(ids) {
  const name = state.selected;
  if (!name || !ids) return;
  const button = $("probe");
  const query = ids === "all" ? "" : "?" + ids.map((id) => `id=${encodeURIComponent(id)}`).join("&");
  if (ids === "all") { button.disabled = true; button.textContent = "Probing…"; }
  try {
    const answer = await fetch(`/api/services/${encodeURIComponent(name)}/probe${query}`, { credentials: "same-origin" });
    if (answer.ok && state.selected === name) {
      const doc = await answer.json();
      for (const result of doc.probes) state.probes[result.endpoint] = result;
      renderInstances();
    }
  } catch (error) {
    // The server went away (the feed's state says so); the next opening probes again.
  } finally {
    if (ids === "all") { button.disabled = !state.selected; button.textContent = "Probe endpoints"; }
  }
}

function renderService() {
  const name = state.selected;
  $("service-title").textContent = name ?? "Select a service";
  $("probe").disabled = !name;
  renderFigures();
  renderInstances();
}

function renderFigures() {
  const name = state.selected;
  const figures = name && state.stats ? state.stats.services[name] : null;
  if (!name) { $("service-figures").replaceChildren(); return; }
  const items = [["instances", number(state.services[name] ?? 0)]];
  if (figures) {
    items.push(["cache age", `${number(figures.age_s, 2)} s`]);
    items.push(["last event lag", `${number(figures.event_lag_us)} µs`]);
    items.push(["max event lag", `${number(figures.event_lag_max_us)} µs`]);
  }
  $("service-figures").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v }))));
}

// The lease cell of a row, written in place: every second for every row, so no new elements.
function showLease(cell, lease, fetchedAt) {
  let text, share = null;
  if (!lease) text = "…";
  else if (lease.id === "0") text = "no lease (never expires)";
  else if (lease.ttl_left == null) text = "lease gone";
  else {
    const left = Math.max(0, lease.ttl_left - (performance.now() - fetchedAt) / 1000);
    share = lease.granted_ttl ? Math.min(1, left / lease.granted_ttl) : 0;
    text = `${Math.round(left)} s of ${lease.granted_ttl} s`;
  }
  let box = cell.firstElementChild;
  if (!box) {
    box = el("div", { class: "lease" }, el("span", { class: "left" }), el("div", { class: "bar" }, el("span")));
    cell.append(box);
  }
  const label = box.firstElementChild;
  if (label.textContent === text) return;  // unchanged since the last second
  const bar = box.lastElementChild;
  label.textContent = text;
  label.classList.toggle("muted", share === null);
  bar.hidden = share === null;
  if (share !== null) {
    bar.firstElementChild.style.width = `${(share * 100).toFixed(1)}%`;
    box.dataset.low = String(share < 0.34);
    box.title = `lease ${lease.id}`;
  }
}

function endpointCell(endpoint) {
  const probe = state.probes[endpoint];
  const badge = probe
    ? el("span", { class: "badge", "data-state": probe.state, text: probe.state, title: `${probe.detail} (${number(probe.millis, 1)} ms)` })
    : null;
  return el("div", { class: "endpoint", "data-endpoint": endpoint }, el("span", { class: "mono", text: endpoint }), badge);
}

// Rows are kept by instance id and rebuilt only when what they show changed, and the table is
// patched in place: a change to a service of thousands of instances touches one row.
const rows = new Map();  // id -> {inst, probes, key, tr}

const probeStates = (inst) => inst.endpoints.map((e) => state.probes[e]?.state ?? "").join(",");
const rowKey = (inst, probes) => JSON.stringify([inst.version, inst.endpoints, inst.metadata, inst.zone, inst.weight, probes]);

function buildRow(inst) {
  const meta = Object.entries(inst.metadata).filter(([k]) => k !== "zone" && k !== "weight");
  return el(
    "tr",
    { "data-id": inst.id },
    el("td", { class: "id", text: inst.id }),
    el("td", { text: inst.version || "–" }),
    el("td", {}, ...inst.endpoints.map(endpointCell)),
    el("td", { text: inst.zone ?? "–" }),
    el("td", { class: "num", text: inst.weight ?? "–" }),
    el("td", {}, ...meta.map(([k, v]) => el("span", { class: "chip", text: `${k}=${v}` }))),
    el("td", { class: "lease-cell" }),
  );
}

function renderInstances() {
  const detail = state.detail;
  const note = $("service-note");
  const body = $("instances").tBodies[0];
  if (!state.selected || !detail) {
    rows.clear();
    body.replaceChildren();
    note.textContent = state.selected ? "Loading…" : "Pick a service on the left to see its instances.";
    return;
  }
  const wanted = detail.instances.map((inst) => {
    const probes = probeStates(inst);
    let row = rows.get(inst.id);
    if (!row || row.inst !== inst || row.probes !== probes) {
      // The same object and probes: nothing to compare. Else (a fresh load) compare what is shown.
      const key = rowKey(inst, probes);
      if (!row || row.key !== key) row = { key, tr: buildRow(inst) };
      Object.assign(row, { inst, probes, key });
      rows.set(inst.id, row);
      showLease(row.tr.lastElementChild, inst.lease, detail.fetchedAt);
    }
    if (detail.fresh?.has(inst.id)) {
      row.tr.classList.remove("fresh");
      void row.tr.offsetWidth;  // so that the highlight plays again on a row shown before
      row.tr.classList.add("fresh");
    }
    return row.tr;
  });
  const keep = new Set(wanted);
  for (const [id, row] of rows) if (!keep.has(row.tr)) { row.tr.remove(); rows.delete(id); }
  for (const child of [...body.children]) if (!keep.has(child)) child.remove();
  let cursor = body.firstElementChild;
  for (const tr of wanted) {
    if (tr === cursor) cursor = cursor.nextElementSibling;
    else body.insertBefore(tr, cursor);
  }
  if (detail.gone) note.textContent = "This service has no instances now.";
  else if (detail.lease_error) note.textContent = `Leases could not be read: ${detail.lease_error}`;
  else note.textContent = wanted.length ? "" : "No instances.";
  if (detail.fresh) detail.fresh = new Set();  // highlight once
}

function tickLeases() {
  const detail = state.detail;
  if (!detail || document.hidden) return;
  for (const inst of detail.instances) {
    const row = rows.get(inst.id);
    if (row) showLease(row.tr.lastElementChild, inst.lease, detail.fetchedAt);
  }
}

// A burst of changes (a mesh redeploying) redraws the lists once per frame, not once per event.
const drawing = new Set();
function drawSoon(draw) {
  if (drawing.size === 0) requestAnimationFrame(() => { const draws = [...drawing]; drawing.clear(); draws.forEach((d) => d()); });
  drawing.add(draw);
}

// Changes to the shown service are applied together, once per frame (a burst of hundreds costs
// one sort and one pass over the table); a new instance's lease follows from a read. The ones
// a read may not hold yet are kept until one does (its answer says up to which change, seq).
let pendingChanges = [];
let recentChanges = [];
const RECENT_KEPT = 5000;

function applyToDetail(change) {
  const detail = state.detail;
  if (!detail || detail.gone) { loadService(true); return; }
  pendingChanges.push(change);
  recentChanges.push(change);
  if (recentChanges.length > RECENT_KEPT) recentChanges.splice(0, recentChanges.length - RECENT_KEPT);
  drawSoon(applyChanges);
  if (change.type === "PUT") probeSoon([change.id]);
}

// Where instance `id` is, or would go, in a list sorted by byId (a binary search: a burst into
// a service of thousands costs no sort).
function indexOfId(list, id) {
  let low = 0;
  let high = list.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (compareIds(list[middle].id, id) < 0) low = middle + 1;
    else high = middle;
  }
  return low;
}

// Applies feed changes to a service's instances, in place (a change to another service is skipped).
function mergeChanges(detail, changes) {
  const list = detail.instances;
  for (const change of changes) {
    if (change.service !== detail.name) continue;
    const at = indexOfId(list, change.id);
    const here = list[at]?.id === change.id;
    if (change.type === "PUT") {
      const instance = { ...change.instance, lease: here ? list[at].lease : null };
      if (here) list[at] = instance;
      else list.splice(at, 0, instance);
      (detail.fresh ??= new Set()).add(change.id);
    } else if (here) {
      list.splice(at, 1);
    }
  }
}

function applyChanges() {
  const detail = state.detail;
  const changes = pendingChanges;
  pendingChanges = [];
  if (!detail) return;
  mergeChanges(detail, changes);
  renderInstances();
  // A small service's new leases are read at once; a big one (a read is ~250 bytes an instance)
  // waits for its periodic read.
  if (detail.instances.length <= 500) loadService(false);
}

// ---- the event log and counters -----------------------------------------------------------

function eventItem(doc) {
  const verb = { registered: "+ registered", updated: "~ updated", deregistered: "− deregistered" }[doc.change];
  const extra = doc.instance ? [doc.instance.version && `v${doc.instance.version}`, doc.instance.endpoints[0]].filter(Boolean).join("  ") : "";
  const item = el(
    "li",
    { "data-change": doc.change, "data-service": doc.service, "data-id": doc.id },
    el("span", { class: "time", text: clockTime(doc.time), title: doc.time }),
    el("span", { class: "what", text: verb }),
    el("span", { class: "detail" }, el("span", { text: `${doc.service} / ` }), el("span", { class: "id", text: doc.id }), extra ? el("span", { class: "extra", text: extra }) : null),
  );
  item.addEventListener("click", () => select(doc.service));
  return item;
}

function renderEvents() {
  $("events").replaceChildren(...state.events.map(eventItem));
  $("event-count").textContent = state.events.length ? `${state.events.length} shown` : "";
}

function addEvent(doc) {
  state.events.unshift(doc);
  const list = $("events");
  list.prepend(eventItem(doc));
  while (state.events.length > EVENTS_SHOWN) { state.events.pop(); list.lastChild.remove(); }
  $("event-count").textContent = `${state.events.length} shown`;
}

function renderStats() {
  const stats = state.stats;
  if (!stats) return;
  $("stats-time").textContent = `at ${clockTime(stats.time).slice(0, 8)}`;
  const error = $("etcd-error");
  error.hidden = !stats.etcd_error;
  error.textContent = stats.etcd_error ? `etcd: ${stats.etcd_error}` : "";
  const entries = Object.entries(stats.registry).sort(([a], [b]) => (a < b ? -1 : 1));
  $("counters").replaceChildren(
    ...entries.flatMap(([k, v]) => {
      const zero = v === 0 ? "zero" : "";
      return [el("dt", { text: k, class: zero }), el("dd", { text: number(v), class: zero })];
    }),
  );
  renderFigures();
}

// ---- the feed -----------------------------------------------------------------------------

function onSnapshot(doc) {
  // A snapshot starts the feed again (perhaps from a restarted console): older changes are moot.
  pendingChanges = [];
  recentChanges = [];
  state.about = doc.about;
  state.services = servicesOf(doc.services);
  state.stats = doc.stats;
  state.events = doc.events.slice(-EVENTS_SHOWN).reverse();
  renderAbout();
  renderEvents();
  renderStats();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("service");
  const first = Object.keys(state.services).sort()[0];
  const pick = state.selected ?? (wanted in state.services ? wanted : first);
  if (pick) select(pick);
  else { renderServices(); renderService(); }
}

// With nothing shown yet, the first service to appear is opened.
function selectFirstIfNone() {
  const first = Object.keys(state.services).sort()[0];
  if (!state.selected && first) { select(first); return true; }
  return false;
}

function onChange(doc) {
  state.services[doc.service] = doc.count;
  addEvent(doc);
  if (selectFirstIfNone()) return;
  drawSoon(renderServices);
  if (doc.service === state.selected) { applyToDetail(doc); drawSoon(renderFigures); }
}

function onServices(doc) {
  state.services = servicesOf(doc.services);
  if (selectFirstIfNone()) return;
  renderServices();
  if (state.selected && !(state.selected in state.services)) loadService(false);
}

function connect() {
  const feed = new EventSource("/api/events");
  const handle = (kind, fn) => feed.addEventListener(kind, (message) => fn(JSON.parse(message.data)));
  feed.onopen = () => setFeedState("live", "live");
  feed.onerror = async () => {
    if (feed.readyState === EventSource.CLOSED) {
      // EventSource gives up on an HTTP error: a refused token, or the console went away.
      const answer = await fetch("/api/overview", { credentials: "same-origin" }).catch(() => null);
      if (answer && (answer.status === 401 || answer.status === 403)) {
        setFeedState("refused", "not authorized: open the URL with ?token=…");
        return;
      }
      setFeedState("reconnecting", "reconnecting…");
      setTimeout(connect, state.about?.reconnect_ms ?? 2000);
    } else {
      setFeedState("reconnecting", "reconnecting…");
    }
  };
  handle("snapshot", onSnapshot);
  handle("change", onChange);
  handle("services", onServices);
  handle("stats", (doc) => { state.stats = doc; renderStats(); });
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", renderServices);
  $("probe").addEventListener("click", () => probe("all"));
  setInterval(tickLeases, 1000);
  // Leases are read again every LEASE_REFRESH_MS, less often for big services (their answer is
  // about 250 bytes an instance, and the server reads them at most 250 leases a second anyway).
  let lastLoad = 0;
  setInterval(() => {
    const size = state.detail?.instances.length ?? 0;
    const perInstanceMs = 1000 / (state.about?.lease_lookups_per_second ?? 250);
    if (document.hidden || performance.now() - lastLoad < Math.max(LEASE_REFRESH_MS, size * perInstanceMs)) return;
    lastLoad = performance.now();
    loadService(false);
  }, 1000);
  renderService();
  connect();
});
