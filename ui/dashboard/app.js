// Coordinator dashboard: one page, hash routes, plain DOM. Served by the
// coordinator itself under /ui/ (no build step, nothing from a CDN).
//
// Rules this file keeps:
// - Data goes into the DOM as text (textContent), never as HTML: worker
//   ids, statuses and payloads come from workers and clients.
// - Lists are fetched one page at a time (`limit` + `after` cursor): the
//   pool may hold 100,000 workers, and no page fetches all of them.
// - Live updates come from the change stream (/api/events); re-fetches it
//   triggers are coalesced to at most one per second per page.
// - The API key is only ever sent in the body of POST /api/session; the
//   session is an HttpOnly cookie the page cannot read.

// ---- error capture (tests read window.__dashErrors) ----------------------

window.__dashErrors = [];
window.addEventListener('error', (e) => {
  window.__dashErrors.push(`error: ${e.message || e.type}`);
});
window.addEventListener('unhandledrejection', (e) => {
  window.__dashErrors.push(`unhandledrejection: ${e.reason && e.reason.stack ? e.reason.stack : e.reason}`);
});
{
  const original = console.error.bind(console);
  console.error = (...args) => {
    window.__dashErrors.push(`console.error: ${args.map(String).join(' ')}`);
    original(...args);
  };
}

// ---- small DOM helpers ---------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);

/** h('td', {class: 'num'}, 'text', child, ...): an element with text children. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const enc = encodeURIComponent;

function qs(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    parts.push(`${enc(k)}=${enc(v)}`);
  }
  return parts.join('&');
}

function fmtNum(v, digits = 2) {
  if (v === undefined || v === null || Number.isNaN(v)) return '';
  return Number.isInteger(v) ? String(v) : Number(v).toFixed(digits);
}

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

function fmtJson(v) {
  return v === undefined ? '' : JSON.stringify(v, null, 2);
}

function workerLink(id) {
  return h('a', { href: `#/workers/${enc(id)}` }, id);
}

function taskLink(id) {
  return h('a', { href: `#/tasks/${enc(id)}` }, id);
}

/** Statuses that make a fresh worker unhealthy (docs/api.md, heartbeat). */
const DOWN = new Set(['unhealthy', 'offline', 'error', 'stopping', 'failed']);

/** What a worker is: drained, its reported status while healthy or down, else stale. */
function workerState(drained, healthy, status) {
  if (drained) return ['drained', 'drained'];
  if (healthy) return [status, 'healthy'];
  if (DOWN.has(String(status).toLowerCase())) return [status, 'down'];
  return ['stale', 'stale'];
}

// ---- status line ---------------------------------------------------------

const statusLine = $('#status-line');

function setStatus(text, kind = 'info') {
  statusLine.textContent = text;
  statusLine.className = kind === 'error' ? 'error' : '';
}

// When an error was last shown: routine "Updated" notes do not hide it
// for a while (another part of the page may load fine right after).
let errorAt = 0;

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return; // the login form says it
  errorAt = Date.now();
  setStatus(err instanceof ApiError ? `${err.message}` : `Error: ${err && err.message ? err.message : err}`, 'error');
}

function updated() {
  if (Date.now() - errorAt < 10000) return;
  setStatus(`Updated ${new Date().toLocaleTimeString()}`);
}

// ---- API -----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail, path) {
    super(`${path}: ${status} ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/** Calls the API with the session cookie; throws ApiError with the server's `detail`. */
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  // State-changing requests by cookie must show they come from this site
  // (docs/security.md, "Browser sessions"); Origin does too, this is sure.
  if (method !== 'GET') headers['X-Requested-With'] = 'coordinator-dashboard';
  const init = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `network error (${e.message})`, path);
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (r.status === 401 && path !== '/api/session') {
    needLogin();
  }
  if (!r.ok) {
    const detail = data && typeof data.detail === 'string' ? data.detail : r.statusText || 'request failed';
    throw new ApiError(r.status, detail, `${method} ${path.split('?')[0]}`);
  }
  return data;
}

/** One GraphQL query (used where REST has no single-record view). */
async function gql(query, variables) {
  const out = await api('POST', '/graphql', { query, variables });
  if (out.errors && out.errors.length) {
    throw new ApiError(out.errors[0].extensions?.status || 200, out.errors[0].message, 'graphql');
  }
  return out.data;
}

// ---- coalescing ----------------------------------------------------------

/**
 * Wraps `fn` so bursts of calls run it at most once per `gap` ms: the first
 * call of a quiet period runs at once, the rest of the burst once after.
 */
function coalesce(fn, gap = 1000) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + gap - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      Promise.resolve(fn()).catch(showError);
    }, wait);
  };
}

// ---- session -------------------------------------------------------------

const loginForm = $('#login-form');
const signOut = $('#sign-out');
let authed = false;
let openCoordinator = false;

function needLogin() {
  if (!authed && !loginForm.hidden) return;
  authed = false;
  stopStream();
  newPage({}); // whatever the last page still loads draws nothing
  $('#main').replaceChildren();
  loginForm.hidden = false;
  signOut.hidden = true;
  setStatus('Sign in with an API key.');
  $('#login-key').focus();
}

loginForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('#login-key');
  const key = input.value;
  $('#login-submit').disabled = true;
  try {
    const s = await api('POST', '/api/session', { api_key: key });
    input.value = '';
    loginForm.hidden = true;
    if (s.role !== 'admin') {
      setStatus(`Signed in with a ${s.role} key: the dashboard's pages need an admin key.`, 'error');
    } else {
      setStatus('Signed in.');
    }
    signedIn();
  } catch (err) {
    setStatus(err.status === 403 ? 'Unknown API key.' : err.message, 'error');
  } finally {
    $('#login-submit').disabled = false;
  }
});

signOut.addEventListener('click', async () => {
  try {
    await api('DELETE', '/api/session');
  } catch (err) {
    showError(err);
  }
  needLogin();
  setStatus('Signed out.');
});

function signedIn() {
  authed = true;
  signOut.hidden = openCoordinator;
  startStream();
  route();
}

async function boot() {
  // An open coordinator answers {"open": true}: nothing to sign in to.
  try {
    const s = await api('POST', '/api/session');
    openCoordinator = !!(s && s.open);
    signedIn();
    return;
  } catch (err) {
    if (err.status !== 401) {
      showError(err);
      return;
    }
  }
  // Keyed: a cookie from an earlier sign-in may still be good.
  try {
    await api('GET', '/api/auth/verify');
    signedIn();
  } catch (err) {
    if (err.status !== 401) showError(err);
    needLogin();
  }
}

// ---- change stream -------------------------------------------------------

const EVENT_TYPES = [
  'worker.registered', 'worker.updated', 'worker.state', 'worker.removed',
  'task.submitted', 'task.leased', 'task.completed', 'task.failed', 'task.requeued', 'task.dead',
  'pin.set', 'pin.removed', 'service.coverage', 'reset',
];
const EVENT_KEEP = 500;
const recentEvents = []; // newest last, at most EVENT_KEEP
let stream = null;

function startStream() {
  if (stream) return;
  const es = new EventSource('/api/events');
  stream = es;
  const live = $('#live');
  es.onopen = () => {
    live.textContent = 'live';
    live.className = 'live on';
  };
  // The browser reconnects by itself (with Last-Event-ID) after a stream
  // ends (a `reset`, a restart). It gives up on an error status (e.g. 401
  // once the session expired): try again later, if still signed in; an
  // expired session shows the sign-in form through the next API call.
  es.onerror = () => {
    live.textContent = 'reconnecting';
    live.className = 'live';
    if (es.readyState !== EventSource.CLOSED || stream !== es) return;
    stream = null;
    live.textContent = 'offline';
    setTimeout(() => {
      if (authed && !stream) api('GET', '/api/auth/verify').then(startStream, showError);
    }, 5000);
  };
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch {
        return;
      }
      recentEvents.push(ev);
      if (recentEvents.length > EVENT_KEEP) recentEvents.splice(0, recentEvents.length - EVENT_KEEP);
      if (page && page.onEvent) page.onEvent(ev);
    });
  }
}

function stopStream() {
  if (stream) stream.close();
  stream = null;
  const live = $('#live');
  live.textContent = 'offline';
  live.className = 'live';
}

// ---- charts (uPlot) ------------------------------------------------------

const RANGES = [
  [900, '15 min'],
  [3600, '1 h'],
  [21600, '6 h'],
  [86400, '24 h'],
  [604800, '7 d'],
];
let rangeSeconds = 3600;
const COLORS = ['#1f5fbf', '#d9480f', '#2b8a3e', '#862e9c', '#c92a2a', '#0b7285', '#5c940d', '#e67700'];

function rangeSelect(onChange) {
  const sel = h('select', { id: 'range', title: 'Time range of the charts' },
    RANGES.map(([s, label]) => h('option', { value: s, selected: s === rangeSeconds }, label)));
  sel.addEventListener('change', () => {
    rangeSeconds = Number(sel.value);
    onChange();
  });
  return h('label', {}, 'Range ', sel);
}

async function history(series, extra = {}) {
  const to = Math.floor(Date.now() / 1000);
  return api('GET', `/api/history?${qs({ series, from: to - rangeSeconds, to, ...extra })}`);
}

/**
 * Draws (or redraws) a chart into `el` from a history reply, keeping the
 * lines `keep` accepts; sets data-points to the non-null points drawn.
 */
function drawChart(el, reply, { unit = '', keep = () => true } = {}) {
  const lines = (reply.lines || []).filter((l) => keep(l.labels || {}));
  const data = [reply.timestamps || []];
  const series = [{}];
  let points = 0;
  lines.forEach((l, i) => {
    const ys = l.avg || [];
    for (const v of ys) if (v !== null && v !== undefined) points += 1;
    data.push(ys);
    const name = Object.values(l.labels || {}).join(', ') || reply.series;
    series.push({ label: name, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
      value: (u, v) => (v === null || v === undefined ? '-' : `${fmtNum(v)} ${unit}`) });
  });
  const width = Math.max(300, el.clientWidth - 2);
  const key = series.map((s) => s.label || '').join('|');
  if (el._plot && el._plotKey === key) {
    el._plot.setData(data);
    if (el._plot.width !== width) el._plot.setSize({ width, height: 200 });
  } else {
    if (el._plot) el._plot.destroy();
    el.replaceChildren();
    el._plot = new uPlot({
      width,
      height: 200,
      scales: { x: { time: true } },
      axes: [{}, { label: unit, size: 60 }],
      series,
    }, data, el);
    el._plotKey = key;
    chartSizes.observe(el);
  }
  el.dataset.points = String(points);
}

function chartCard(id, title) {
  return h('div', { class: 'card' }, h('h2', {}, title), h('div', { id, class: 'chart', 'data-points': '0' }));
}

// Charts follow their card's width (window resizes, a scrollbar coming).
const chartSizes = new ResizeObserver(coalesce(() => {
  for (const el of document.querySelectorAll('.chart')) {
    const width = Math.max(300, el.clientWidth - 2);
    if (el._plot && el._plot.width !== width) el._plot.setSize({ width, height: 200 });
  }
}, 250));

// ---- sortable tables -----------------------------------------------------

/**
 * A table whose headers sort the rows it holds (this page only: the server
 * pages in its own fixed order). cols: [{label, key(row) -> value, num}].
 */
function sortableTable(id, cols, rows, rowEl) {
  const table = h('table', { id });
  const state = { col: -1, dir: 1 };
  const tbody = h('tbody');
  const fill = () => {
    let list = rows;
    if (state.col >= 0) {
      const key = cols[state.col].key;
      list = [...rows].sort((a, b) => {
        const x = key(a);
        const y = key(b);
        if (x === y) return 0;
        if (x === undefined || x === null) return 1;
        if (y === undefined || y === null) return -1;
        return (x < y ? -1 : 1) * state.dir;
      });
    }
    tbody.replaceChildren(...list.map(rowEl));
  };
  const headRow = h('tr', {}, cols.map((c, i) => {
    if (!c.key) return h('th', {}, c.label);
    const th = h('th', { class: `sortable${c.num ? ' num' : ''}`, title: 'Sort this page (client-side; the server pages in its own order)' }, c.label);
    th.addEventListener('click', () => {
      state.dir = state.col === i ? -state.dir : 1;
      state.col = i;
      for (const o of headRow.children) o.classList.remove('sorted-asc', 'sorted-desc');
      th.classList.add(state.dir > 0 ? 'sorted-asc' : 'sorted-desc');
      fill();
    });
    return th;
  }));
  table.append(h('thead', {}, headRow), tbody);
  fill();
  table.setRows = (r) => {
    rows = r;
    fill();
  };
  return table;
}

// ---- confirm dialog ------------------------------------------------------

/** An in-page confirmation (a <dialog>, not window.confirm: WebDriver clicks it). */
function confirmAction(text) {
  const dlg = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    const done = (v) => {
      $('#confirm-yes').onclick = null;
      $('#confirm-no').onclick = null;
      dlg.onclose = null;
      if (dlg.open) dlg.close();
      resolve(v);
    };
    $('#confirm-yes').onclick = () => done(true);
    $('#confirm-no').onclick = () => done(false);
    dlg.onclose = () => done(false);
    dlg.showModal();
  });
}

// ---- pages ---------------------------------------------------------------

// The page on screen: {onEvent(ev)?, stop()?}. A page's async work checks
// `alive()` after each await, so a page left mid-fetch draws nothing.
let page = null;
let pageSeq = 0;

function newPage(p) {
  if (page && page.stop) page.stop();
  const seq = ++pageSeq;
  p.alive = () => seq === pageSeq;
  page = p;
  return p;
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function countList(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('p', { class: 'muted' }, 'none');
  return kv(entries.sort().map(([k, v]) => [k, String(v)]));
}

// Overview ------------------------------------------------------------------

function overviewPage(main) {
  const p = newPage({});
  const summary = h('div', { class: 'grid' });
  const coverage = h('div', { class: 'card' }, h('h2', {}, 'Service coverage'));
  const charts = h('div', { class: 'charts' },
    chartCard('chart-requests', 'Requests (req/s, all routes)'),
    chartCard('chart-p99', 'Latency p99 (ms, all but long-polls)'),
    chartCard('chart-tasks', 'Task completions (per s)'));
  main.replaceChildren(h('h1', {}, 'Overview'), summary,
    h('div', { class: 'toolbar' }, rangeSelect(() => drawCharts().catch(showError))), charts, coverage);

  const loadSummary = async () => {
    // Catalog coverage only (gaps carries the counts): /api/admin/services
    // lists every healthy worker's id, too heavy to re-read on every change
    // of a large pool. The Services page shows declared services too.
    const [stats, health, gaps, tasks] = await Promise.all([
      api('GET', '/api/admin/stats'),
      api('GET', '/api/admin/health'),
      api('GET', '/api/admin/gaps'),
      api('GET', '/api/admin/tasks?limit=1'),
    ]);
    if (!p.alive()) return;
    const tiers = stats.workers_by_tier || {};
    summary.replaceChildren(
      h('div', { class: 'card' }, h('h2', {}, 'Workers'),
        h('div', { class: 'big' }, `${stats.healthy_workers} / ${stats.total_workers}`),
        h('div', { class: 'muted' }, `healthy / registered; overall ${health.overall_status}`)),
      h('div', { class: 'card', id: 'workers-by-status' }, h('h2', {}, 'By status'), countList(health.workers_by_status)),
      h('div', { class: 'card', id: 'workers-by-tier' }, h('h2', {}, 'Healthy by tier'), kv([
        ['1 gpu', String(tiers.gpu_workers ?? 0)],
        ['2 cpu (service)', String(tiers.service_workers ?? 0)],
        ['3 storage (data)', String(tiers.data_workers ?? 0)],
      ])),
      h('div', { class: 'card', id: 'tasks-by-state' }, h('h2', {}, 'Tasks by state'), countList(tasks.counts)),
    );
    coverage.replaceChildren(h('h2', {}, 'Service coverage'), coverageTable(gaps, {}));
    updated();
  };

  const drawCharts = async () => {
    const [req, p99, done] = await Promise.all([
      history('requests'), history('latency_p99_ms'), history('task_completions'),
    ]);
    if (!p.alive()) return;
    const all = (l) => l.route === 'all';
    drawChart($('#chart-requests'), req, { unit: 'req/s', keep: all });
    drawChart($('#chart-p99'), p99, { unit: 'ms', keep: all });
    drawChart($('#chart-tasks'), done, { unit: '/s' });
  };

  const refresh = coalesce(loadSummary);
  p.onEvent = refresh;
  const timer = setInterval(() => drawCharts().catch(showError), 10000);
  p.stop = () => clearInterval(timer);
  loadSummary().catch(showError);
  drawCharts().catch(showError);
}

/** Catalog services (gaps) and declared ones (services), gaps in red. */
function coverageTable(gaps, services) {
  const byName = new Map();
  for (const g of gaps.gaps || []) byName.set(g.service, { ...g });
  for (const s of services.services || []) {
    const row = byName.get(s.name) || { service: s.name, tier: null, requires: null, healthy_workers: s.worker_count, status: null };
    row.worker_count = s.worker_count;
    byName.set(s.name, row);
  }
  const rows = [...byName.values()].sort((a, b) => a.service.localeCompare(b.service));
  return h('table', { id: 'coverage-table' },
    h('thead', {}, h('tr', {}, h('th', {}, 'service'), h('th', {}, 'tier'), h('th', {}, 'requires'),
      h('th', { class: 'num' }, 'healthy workers'), h('th', {}, 'coverage'))),
    h('tbody', {}, rows.map((r) => h('tr', { class: r.status === 'critical' || r.status === 'warning' ? r.status : '', 'data-service': r.service },
      h('td', {}, h('a', { href: `#/workers?service=${enc(r.service)}` }, r.service)),
      h('td', {}, r.tier ?? ''),
      h('td', {}, r.requires ?? ''),
      h('td', { class: 'num' }, r.healthy_workers ?? r.worker_count ?? 0),
      h('td', {}, r.status === 'critical' ? 'gap: no healthy worker' : r.status === 'warning' ? 'one healthy worker' : (r.status || 'declared'))))));
}

/**
 * Copies a filter form's fields into `f` when it is submitted or one of its
 * selects changes, then `restart()`s the list from its first page.
 */
function bindFilters(form, f, restart) {
  const apply = (e) => {
    if (e) e.preventDefault();
    const data = new FormData(form);
    for (const k of Object.keys(f)) f[k] = String(data.get(k) || '').trim();
    restart();
  };
  form.addEventListener('submit', apply);
  for (const sel of form.querySelectorAll('select')) sel.addEventListener('change', apply);
}

/**
 * Cursor paging over one list route: Previous / Next buttons, the cursors
 * of the pages before, and a sequence number so that an older, slower load
 * never overwrites a newer one. `fetchPage(after)` asks for one page,
 * `render(reply, pageNumber)` draws it; `restart()` goes back to page one.
 */
function cursorPager(prefix, p, fetchPage, render) {
  const cursors = [];
  let after = '';
  let next = null;
  let seq = 0;
  const prev = h('button', { type: 'button', id: `${prefix}-prev`, disabled: true }, 'Previous');
  const nextBtn = h('button', { type: 'button', id: `${prefix}-next`, disabled: true }, 'Next page');
  const load = async () => {
    const mine = ++seq;
    const r = await fetchPage(after);
    // A newer load (filter change, event) may have finished first.
    if (!p.alive() || mine !== seq) return;
    next = r.next ?? null;
    nextBtn.disabled = next === null;
    prev.disabled = cursors.length === 0;
    render(r, cursors.length + 1);
  };
  prev.addEventListener('click', () => {
    after = cursors.pop() ?? '';
    load().catch(showError);
  });
  nextBtn.addEventListener('click', () => {
    if (next === null) return;
    cursors.push(after);
    after = next;
    load().catch(showError);
  });
  const restart = () => {
    cursors.length = 0;
    after = '';
    return load();
  };
  return { prev, next: nextBtn, load, restart };
}

// Workers -------------------------------------------------------------------

const PAGE_SIZE = 50;

function workersPage(main, query) {
  const p = newPage({});
  const f = {
    status: query.get('status') || '',
    tier: query.get('tier') || '',
    service: query.get('service') || '',
    model: query.get('model') || '',
  };
  let first = true;

  const input = (name, attrs = {}) => h('input', { name, value: f[name], ...attrs });
  const form = h('form', { class: 'filters', id: 'workers-filters' },
    h('label', {}, 'status', h('select', { name: 'status' },
      ['', 'healthy', 'stale', 'drained', 'busy', 'offline', 'unhealthy'].map((s) => h('option', { value: s, selected: s === f.status }, s || 'any')))),
    h('label', {}, 'tier', h('select', { name: 'tier' },
      [['', 'any'], ['1', '1 gpu'], ['2', '2 cpu'], ['3', '3 storage'], ['4', '4 edge']].map(([v, l]) => h('option', { value: v, selected: v === f.tier }, l)))),
    h('label', {}, 'service', input('service', { placeholder: 'e.g. llm-inference' })),
    h('label', {}, 'model', input('model', { placeholder: 'exact name' })),
    h('button', { type: 'submit' }, 'Apply'));

  const cols = [
    { label: 'worker', key: (w) => w.worker_id },
    { label: 'type', key: (w) => w.worker_type },
    { label: 'tier', key: (w) => w.tier, num: true },
    { label: 'status', key: (w) => workerState(w.drained, w.is_healthy, w.status)[0] },
    { label: 'load', key: (w) => w.current_load, num: true },
    { label: 'active', key: (w) => w.active_requests, num: true },
    { label: 'services', key: (w) => (w.assigned_services || []).join(',') },
    { label: 'models', key: (w) => (w.loaded_models || []).join(',') },
    { label: 'heartbeat age (s)', key: (w) => w.age_seconds, num: true },
  ];
  const rowEl = (w) => h('tr', { 'data-worker-id': w.worker_id },
    h('td', {}, workerLink(w.worker_id)),
    h('td', {}, w.worker_type),
    h('td', { class: 'num' }, w.tier),
    (([text, cls]) => h('td', { class: `status ${cls}`, title: `reported: ${w.status}` }, text))(workerState(w.drained, w.is_healthy, w.status)),
    h('td', { class: 'num' }, fmtNum(w.current_load)),
    h('td', { class: 'num' }, w.active_requests),
    h('td', {}, (w.assigned_services || []).join(', ')),
    h('td', {}, (w.loaded_models || []).join(', ')),
    h('td', { class: 'num' }, fmtNum(w.age_seconds, 1)));
  const table = sortableTable('workers-table', cols, [], rowEl);
  const info = h('span', { class: 'muted' });
  const pager = cursorPager('workers', p,
    (after) => api('GET', `/api/admin/workers?${qs({ limit: PAGE_SIZE, after, ...f })}`),
    (r, page) => {
      table.setRows(r.workers || []);
      info.textContent = `page ${page}: ${r.workers.length} worker(s), ${r.healthy} healthy`;
      if (first) {
        first = false;
        performance.mark('workers-rendered');
      }
      updated();
    });
  const load = pager.load;
  bindFilters(form, f, () => pager.restart().catch(showError));
  main.replaceChildren(h('h1', {}, 'Workers'), form, h('div', { class: 'pager' }, pager.prev, pager.next, info), table);

  const refresh = coalesce(load);
  p.onEvent = (ev) => {
    if (ev.type.startsWith('worker.') || ev.type === 'reset') refresh();
  };
  load().catch(showError);
}

// Worker --------------------------------------------------------------------

const WORKER_QUERY = `query($id: String!) { worker(id: $id) {
  workerId workerType tier status tunnelUrl ipAddress endpoint capabilities services
  assignedServices currentLoad availableMemory loadedModels activeRequests gpuUtilization
  servicesStatus specialization tasksCompleted registeredAt lastHeartbeat ageSeconds isHealthy drained } }`;

function workerPage(main, id) {
  const p = newPage({});
  const record = h('div', { class: 'card' }, h('p', { class: 'muted' }, 'Loading...'));
  const drain = h('button', { type: 'button', id: 'worker-drain', class: 'primary' }, 'Drain');
  const undrain = h('button', { type: 'button', id: 'worker-undrain' }, 'Undrain');
  const unregister = h('button', { type: 'button', id: 'worker-unregister', class: 'danger' }, 'Unregister');
  const tasks = h('div', { class: 'card' }, h('h2', {}, 'Recent tasks'));
  const charts = h('div', { class: 'charts' },
    chartCard('chart-worker-load', 'Load'),
    chartCard('chart-worker-active', 'Active requests'));
  main.replaceChildren(
    h('h1', {}, 'Worker ', h('span', { id: 'worker-id' }, id)),
    h('div', { class: 'toolbar' }, drain, undrain, unregister, h('a', { href: '#/workers' }, 'all workers')),
    record,
    h('div', { class: 'toolbar' }, rangeSelect(() => drawCharts().catch(showError))),
    charts, tasks);

  const act = async (what, call) => {
    if (!(await confirmAction(`${what} worker ${id}?`))) return;
    try {
      await call();
      setStatus(`${what}: done for ${id}.`);
      if (what === 'Unregister') location.hash = '#/workers';
      else await loadRecord();
    } catch (err) {
      showError(err);
    }
  };
  drain.addEventListener('click', () => act('Drain', () => api('POST', `/api/admin/workers/${enc(id)}/drain`)));
  undrain.addEventListener('click', () => act('Undrain', () => api('POST', `/api/admin/workers/${enc(id)}/undrain`)));
  unregister.addEventListener('click', () => act('Unregister', () => api('DELETE', `/api/worker/unregister/${enc(id)}`)));

  async function loadRecord() {
    const data = await gql(WORKER_QUERY, { id });
    if (!p.alive()) return;
    const w = data.worker;
    if (!w) {
      record.replaceChildren(h('p', { id: 'worker-missing' }, 'This worker is not registered.'));
      drain.disabled = undrain.disabled = unregister.disabled = true;
      return;
    }
    drain.disabled = w.drained;
    undrain.disabled = !w.drained;
    unregister.disabled = false;
    const [status, cls] = workerState(w.drained, w.isHealthy, w.status);
    record.replaceChildren(h('div', { class: 'grid' },
      kv([
        ['status', h('span', { class: `status ${cls}`, id: 'worker-status' }, status)],
        ['reported status', w.status],
        ['healthy', w.isHealthy ? 'yes' : 'no'],
        ['type / tier', `${w.workerType} / ${w.tier}`],
        ['endpoint', w.endpoint || ''],
        ['load', fmtNum(w.currentLoad)],
        ['active requests', String(w.activeRequests)],
        ['gpu utilization', fmtNum(w.gpuUtilization)],
        ['available memory', w.availableMemory || ''],
        ['tasks completed', String(w.tasksCompleted)],
        ['registered', fmtTime(w.registeredAt)],
        ['last heartbeat', `${fmtTime(w.lastHeartbeat)} (${fmtNum(w.ageSeconds, 1)} s ago)`],
      ]),
      kv([
        ['services', (w.assignedServices || []).join(', ') || 'none'],
        ['declared', (w.services || []).map((s) => (typeof s === 'string' ? s : s.name)).join(', ') || 'none'],
        ['models', (w.loadedModels || []).join(', ') || 'none'],
        ['specialization', w.specialization || ''],
        ['capabilities', h('pre', {}, fmtJson(w.capabilities))],
      ])));
    updated();
  }

  async function loadTasks() {
    const r = await api('GET', `/api/admin/tasks?${qs({ worker: id, limit: 20 })}`);
    if (!p.alive()) return;
    tasks.replaceChildren(h('h2', {}, 'Recent tasks'), taskTable('worker-tasks', r.tasks || []));
  }

  async function drawCharts() {
    const [load, active] = await Promise.all([
      history('worker_load', { worker_id: id }), history('worker_active', { worker_id: id }),
    ]);
    if (!p.alive()) return;
    drawChart($('#chart-worker-load'), load, { unit: '' });
    drawChart($('#chart-worker-active'), active, { unit: 'req' });
  }

  const refreshRecord = coalesce(loadRecord);
  const refreshTasks = coalesce(loadTasks);
  p.onEvent = (ev) => {
    if (ev.type.startsWith('worker.') && ev.key === id) refreshRecord();
    if (ev.type.startsWith('task.') && ev.data && ev.data.worker_id === id) refreshTasks();
  };
  const timer = setInterval(() => drawCharts().catch(showError), 10000);
  p.stop = () => clearInterval(timer);
  loadRecord().catch(showError);
  loadTasks().catch(showError);
  drawCharts().catch(showError);
}

// Services ------------------------------------------------------------------

function servicesPage(main) {
  const p = newPage({});
  const coverage = h('div', { class: 'card' }, h('h2', {}, 'Coverage'));
  const perService = h('div', { class: 'card' }, h('h2', {}, 'Workers per service'));
  const pins = h('div', { class: 'card' }, h('h2', {}, 'Pins'));
  const pinForm = h('form', { class: 'filters', id: 'pin-form' },
    h('label', {}, 'kind', h('select', { name: 'kind' }, h('option', { value: 'service' }, 'service'), h('option', { value: 'model' }, 'model'))),
    h('label', {}, 'name', h('input', { name: 'name', required: true, placeholder: 'llm-inference' })),
    h('label', {}, 'workers (comma-separated)', h('input', { name: 'workers', required: true, size: 40 })),
    h('button', { type: 'submit', id: 'pin-set' }, 'Set pin'));
  pinForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const d = new FormData(pinForm);
    const workers = String(d.get('workers')).split(',').map((s) => s.trim()).filter(Boolean);
    try {
      await api('PUT', '/api/admin/pins', { [d.get('kind')]: String(d.get('name')).trim(), workers });
      setStatus('Pin set.');
      pinForm.reset();
      await loadPins();
    } catch (err) {
      showError(err);
    }
  });
  main.replaceChildren(h('h1', {}, 'Services'), coverage, perService, pins);

  const SHOWN = 20; // worker ids listed per service; the count is exact
  async function loadCoverage() {
    const [gaps, services] = await Promise.all([api('GET', '/api/admin/gaps'), api('GET', '/api/admin/services')]);
    if (!p.alive()) return;
    coverage.replaceChildren(h('h2', {}, 'Coverage'), coverageTable(gaps, services));
    const list = [...(services.services || [])].sort((a, b) => a.name.localeCompare(b.name));
    perService.replaceChildren(h('h2', {}, 'Workers per service'), h('table', { id: 'services-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'service'), h('th', { class: 'num' }, 'healthy workers'), h('th', {}, 'workers'))),
      h('tbody', {}, list.map((s) => h('tr', { 'data-service': s.name },
        h('td', {}, s.name),
        h('td', { class: 'num' }, s.worker_count),
        h('td', {}, (s.workers || []).slice(0, SHOWN).flatMap((id, i) => [i ? ', ' : '', workerLink(id)]),
          s.workers && s.workers.length > SHOWN ? h('a', { href: `#/workers?service=${enc(s.name)}` }, ` ... all ${s.worker_count}`) : ''))))));
    updated();
  }

  async function loadPins() {
    const r = await api('GET', '/api/admin/pins');
    if (!p.alive()) return;
    const rows = (r.pins || []).map((pin) => h('tr', { 'data-pin': `${pin.kind}:${pin.name}` },
      h('td', {}, pin.kind), h('td', {}, pin.name),
      h('td', {}, (pin.workers || []).flatMap((id, i) => [i ? ', ' : '', workerLink(id)])),
      h('td', {}, h('button', {
        type: 'button',
        class: 'danger pin-remove',
        onclick: async () => {
          if (!(await confirmAction(`Remove the pin of ${pin.kind} ${pin.name}?`))) return;
          try {
            await api('DELETE', `/api/admin/pins?${qs({ [pin.kind]: pin.name })}`);
            setStatus('Pin removed.');
            await loadPins();
          } catch (err) {
            showError(err);
          }
        },
      }, 'Remove'))));
    pins.replaceChildren(h('h2', {}, 'Pins'),
      rows.length ? h('table', { id: 'pins-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'kind'), h('th', {}, 'name'), h('th', {}, 'workers'), h('th', {}))), h('tbody', {}, rows))
        : h('p', { class: 'muted' }, 'No pins: requests go to the least-loaded healthy worker.'),
      pinForm);
  }

  const refreshCoverage = coalesce(loadCoverage);
  const refreshPins = coalesce(loadPins);
  p.onEvent = (ev) => {
    if (ev.type.startsWith('pin.')) refreshPins();
    else if (ev.type.startsWith('worker.') || ev.type === 'service.coverage' || ev.type === 'reset') refreshCoverage();
  };
  loadCoverage().catch(showError);
  loadPins().catch(showError);
}

// Tasks ---------------------------------------------------------------------

function taskTable(id, tasks) {
  return sortableTable(id, [
    { label: 'task', key: (t) => t.task_id },
    { label: 'type', key: (t) => t.type },
    { label: 'state', key: (t) => t.state },
    { label: 'target', key: (t) => (t.target ? `${t.target.kind}:${t.target.name}` : '') },
    { label: 'worker', key: (t) => t.worker_id },
    { label: 'attempts', key: (t) => t.attempts, num: true },
    { label: 'updated', key: (t) => t.updated_at },
    { label: '' },
  ], tasks, (t) => h('tr', { 'data-task-id': t.task_id },
    h('td', {}, taskLink(t.task_id)),
    h('td', {}, t.type),
    h('td', { class: `state-${t.state}` }, t.state),
    h('td', {}, t.target ? `${t.target.kind}: ${t.target.name}` : ''),
    h('td', {}, t.worker_id ? workerLink(t.worker_id) : ''),
    h('td', { class: 'num' }, `${t.attempts ?? ''}/${t.max_attempts ?? ''}`),
    h('td', {}, fmtTime(t.updated_at)),
    h('td', {}, REQUEUABLE.has(t.state) ? h('button', { type: 'button', class: 'requeue', onclick: () => requeue(t.task_id) }, 'Requeue') : '')));
}

/** Final states an operator may put back in the queue (POST .../requeue). */
const REQUEUABLE = new Set(['dead', 'failed']);

async function requeue(id) {
  if (!(await confirmAction(`Requeue task ${id}? It starts again with no attempts used.`))) return;
  try {
    const t = await api('POST', `/api/admin/tasks/${enc(id)}/requeue`);
    setStatus(`Task ${id} requeued (state ${t && t.state}).`);
    if (page && page.reload) page.reload();
  } catch (err) {
    showError(err);
  }
}

function tasksPage(main, query) {
  const p = newPage({});
  const f = { state: query.get('state') || '', service: query.get('service') || '', worker: query.get('worker') || '' };
  const form = h('form', { class: 'filters', id: 'tasks-filters' },
    h('label', {}, 'state', h('select', { name: 'state' },
      ['', 'queued', 'leased', 'completed', 'failed', 'dead'].map((s) => h('option', { value: s, selected: s === f.state }, s || 'any')))),
    h('label', {}, 'service', h('input', { name: 'service', value: f.service })),
    h('label', {}, 'worker', h('input', { name: 'worker', value: f.worker })),
    h('button', { type: 'submit' }, 'Apply'),
    h('a', { href: '#/tasks?state=dead' }, 'dead letters'), h('a', { href: '#/tasks?state=failed' }, 'failed'));
  const counts = h('div', { class: 'card', id: 'task-counts' });
  const table = taskTable('tasks-table', []);
  const pager = cursorPager('tasks', p,
    (after) => api('GET', `/api/admin/tasks?${qs({ limit: PAGE_SIZE, after, ...f })}`),
    (r) => {
      counts.replaceChildren(h('h2', {}, 'All tasks by state'), countList(r.counts));
      table.setRows(r.tasks || []);
      updated();
    });
  const load = pager.load;
  bindFilters(form, f, () => pager.restart().catch(showError));
  main.replaceChildren(h('h1', {}, 'Tasks'), counts, form, h('div', { class: 'pager' }, pager.prev, pager.next), table);

  p.reload = () => load().catch(showError);
  const refresh = coalesce(load);
  p.onEvent = (ev) => {
    if (ev.type.startsWith('task.') || ev.type === 'reset') refresh();
  };
  load().catch(showError);
}

function taskPage(main, id) {
  const p = newPage({});
  const body = h('div', { class: 'card' }, h('p', { class: 'muted' }, 'Loading...'));
  const requeueBtn = h('button', { type: 'button', id: 'task-requeue', class: 'primary', hidden: true }, 'Requeue');
  requeueBtn.addEventListener('click', () => requeue(id));
  main.replaceChildren(h('h1', {}, 'Task ', h('span', { id: 'task-id' }, id)),
    h('div', { class: 'toolbar' }, requeueBtn, h('a', { href: '#/tasks' }, 'all tasks')), body);

  async function load() {
    const t = await api('GET', `/api/tasks/${enc(id)}`);
    if (!p.alive()) return;
    requeueBtn.hidden = !REQUEUABLE.has(t.state);
    body.replaceChildren(
      kv([
        ['state', h('span', { id: 'task-state', class: `state-${t.state}` }, t.state)],
        ['type', t.type || ''],
        ['target', t.target ? `${t.target.kind}: ${t.target.name}` : ''],
        ['attempts', `${t.attempts} of ${t.max_attempts}`],
        ['worker', t.worker_id ? workerLink(t.worker_id) : 'none'],
        ['lease expires', fmtTime(t.lease_expires_at)],
        ['finished by', t.finished_by || ''],
        ['created', fmtTime(t.created_at)],
        ['updated', fmtTime(t.updated_at)],
      ]),
      h('h2', {}, 'Payload'), h('pre', { id: 'task-payload' }, fmtJson(t.payload)),
      h('h2', {}, 'Result'), h('pre', { id: 'task-result' }, fmtJson(t.result)),
      h('h2', {}, 'Error'), h('pre', { id: 'task-error' }, fmtJson(t.error)));
    updated();
  }
  p.reload = () => load().catch(showError);
  const refresh = coalesce(load);
  p.onEvent = (ev) => {
    if (ev.type.startsWith('task.') && ev.key === id) refresh();
  };
  load().catch(showError);
}

// Events --------------------------------------------------------------------

function eventsPage(main) {
  const p = newPage({});
  const f = { topic: '', type: '', key: '', service: '' };
  let paused = false;
  const form = h('form', { class: 'filters', id: 'events-filters' },
    h('label', {}, 'topic', h('select', { name: 'topic' },
      ['', 'worker', 'task', 'pin', 'service'].map((t) => h('option', { value: t }, t || 'all')))),
    h('label', {}, 'type', h('select', { name: 'type' },
      ['', ...EVENT_TYPES].map((t) => h('option', { value: t }, t || 'any')))),
    h('label', {}, 'key contains (worker / task id)', h('input', { name: 'key' })),
    h('label', {}, 'service', h('input', { name: 'service' })));
  const list = h('ul', { id: 'events-list' });
  const pause = h('button', { type: 'button', id: 'events-pause' }, 'Pause');
  const count = h('span', { class: 'muted' });
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) redraw();
  });
  const apply = () => {
    const d = new FormData(form);
    for (const k of Object.keys(f)) f[k] = String(d.get(k) || '').trim();
    redraw();
  };
  form.addEventListener('input', apply);
  form.addEventListener('submit', (e) => e.preventDefault());
  main.replaceChildren(h('h1', {}, 'Events'),
    h('p', { class: 'muted' }, `The last ${EVENT_KEEP} events of the change stream since the dashboard was opened, newest first.`),
    form, h('div', { class: 'toolbar' }, pause, count), h('div', { class: 'card' }, list));

  const matches = (ev) => {
    if (f.topic && !(ev.type.split('.')[0] === f.topic)) return false;
    if (f.type && ev.type !== f.type) return false;
    if (f.key && !String(ev.key).includes(f.key)) return false;
    if (f.service) {
      const d = ev.data || {};
      const services = [d.service, ...(d.services || []), d.target && d.target.service, ev.type.startsWith('service.') || ev.type.startsWith('pin.') ? ev.key : null];
      if (!services.some((s) => s && String(s).includes(f.service))) return false;
    }
    return true;
  };
  const line = (ev) => h('li', { 'data-type': ev.type },
    h('span', { class: 'muted' }, `${fmtTime(ev.time)} `),
    h('span', { class: 'type' }, ev.type), ' ', ev.key, ' ', JSON.stringify(ev.data));
  function redraw() {
    const shown = recentEvents.filter(matches).slice(-EVENT_KEEP).reverse();
    list.replaceChildren(...shown.map(line));
    count.textContent = `${shown.length} shown`;
  }
  // Events arrive in bursts (a mass registration): draw once per frame.
  let pending = [];
  let frame = 0;
  p.onEvent = (ev) => {
    if (paused || !matches(ev)) return;
    pending.push(ev);
    if (!frame) {
      frame = requestAnimationFrame(() => {
        frame = 0;
        if (!p.alive()) return;
        const add = pending.slice(-EVENT_KEEP).reverse().map(line);
        pending = [];
        list.prepend(...add);
        while (list.childElementCount > EVENT_KEEP) list.lastElementChild.remove();
        count.textContent = `${list.childElementCount} shown`;
      });
    }
  };
  redraw();
}

// ---- router --------------------------------------------------------------

function route() {
  if (!authed) return;
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, search] = hash.split('?');
  const parts = path.split('/').filter(Boolean);
  const query = new URLSearchParams(search || '');
  const name = parts[0] || 'overview';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  const main = $('#main');
  const id = parts.length > 1 ? decodeURIComponent(parts.slice(1).join('/')) : null;
  switch (name) {
    case 'overview': return overviewPage(main);
    case 'workers': return id ? workerPage(main, id) : workersPage(main, query);
    case 'services': return servicesPage(main);
    case 'tasks': return id ? taskPage(main, id) : tasksPage(main, query);
    case 'events': return eventsPage(main);
    default:
      newPage({});
      main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/overview' }, 'Overview')));
      return undefined;
  }
}

window.addEventListener('hashchange', route);
boot();
