// The operators' dashboard: hand-written, no framework, no build step.
//
// Everything comes from the public API with the operator's key (if one is set):
//   GET /v1/overview            queue depth, workers, jobs by state   every 3 s
//   GET /v1/jobs?limit=…        recent jobs                           every 3 s
//   GET /v1/workers             the fleet                             every 6 s
//   GET /v1/jobs/{id}/events    the selected job, live (one stream, read with fetch so that
//                               it can carry the Authorization header, which EventSource cannot)
//   POST /v1/jobs, DELETE /v1/jobs/{id}, GET /v1/jobs/{id}/result
// Refreshes pause while the tab is hidden and never overlap; the DOM is touched only where a
// value changed.
'use strict';

(() => {
  const STATES = ['queued', 'running', 'succeeded', 'failed', 'canceled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
  const REFRESH_MS = 3000;
  const LIST_LIMIT = 20;
  const KEY_STORAGE = 'arr.dashboard.apiKey';

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const setText = (e, text) => { if (e.textContent !== text) e.textContent = text; };
  const setClass = (e, cls) => { if (e.className !== cls) e.className = cls; };
  const setWidth = (e, pct) => {
    const w = `${Math.max(0, Math.min(100, pct)).toFixed(1)}%`;
    if (e.style.width !== w) e.style.width = w;
  };
  const fmt = new Intl.NumberFormat();
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ---- time ---------------------------------------------------------------------------------

  const ms = (t) => (t ? Date.parse(t) : NaN);
  function duration(millis) {
    if (!Number.isFinite(millis)) return '–';
    const s = Math.max(0, millis) / 1000;
    if (s < 10) return `${s.toFixed(1)} s`;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  function ago(t) {
    const d = (Date.now() - ms(t)) / 1000;
    if (!Number.isFinite(d)) return '–';
    if (d < 5) return 'just now';
    if (d < 60) return `${Math.round(d)} s ago`;
    if (d < 3600) return `${Math.round(d / 60)} min ago`;
    if (d < 86400) return `${Math.round(d / 3600)} h ago`;
    return new Date(ms(t)).toLocaleDateString();
  }
  const clock = (t) => new Date(ms(t)).toLocaleTimeString([], { hour12: false });

  // ---- the API ------------------------------------------------------------------------------

  const apiKey = () => { try { return sessionStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; } };
  function headers(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra);
    const key = apiKey();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function readBody(res) {
    const type = res.headers.get('content-type') || '';
    if (type.includes('json')) {
      try { return await res.json(); } catch { return null; }
    }
    const text = await res.text();
    return text ? { detail: text.slice(0, 300) } : null;
  }

  async function call(path, init = {}) {
    const res = await fetch(path, Object.assign({ cache: 'no-store' }, init, { headers: headers(init.headers) }));
    if (res.status === 401 || res.status === 403) needKey(res.status);
    return res;
  }

  async function getJson(path) {
    const res = await call(path);
    const body = await readBody(res);
    if (!res.ok) throw new ApiError(res.status, body);
    return body;
  }

  // ---- connection state and the key --------------------------------------------------------

  let authTrouble = 0;
  function needKey(status) {
    authTrouble = status;
    const banner = $('banner');
    banner.textContent = status === 401
      ? 'This server asks for an API key. Enter an operator key under “API key” (it is kept in this tab only).'
      : 'This API key may not see this page’s data: the dashboard needs an operator key.';
    banner.hidden = false;
    setConn('auth', status === 401 ? 'API key needed' : 'not an operator key');
    $('key').open = true;
  }
  function setConn(state, text) {
    const conn = $('conn');
    if (conn.dataset.state !== state) conn.dataset.state = state;
    setText($('conn-text'), text);
  }
  function showKeyState() {
    setText($('key-summary'), apiKey() ? 'API key ✓' : 'API key');
  }

  // ---- overview -----------------------------------------------------------------------------

  let filter = '';
  const stateButtons = {};
  const stateSegments = {};
  const filterButtons = {};

  function buildStatic() {
    const states = $('states');
    const bar = $('statebar');
    const filters = $('filters');
    const all = el('button', '', 'All');
    all.type = 'button';
    all.dataset.state = '';
    filters.append(all);
    filterButtons[''] = all;
    for (const s of STATES) {
      const b = el('button', `state-count s-${s}`);
      b.type = 'button';
      b.dataset.state = s;
      b.title = `Show ${s} jobs`;
      b.append(el('b', '', '–'), document.createTextNode(s));
      states.append(b);
      stateButtons[s] = b;
      const seg = el('span', `s-${s}`);
      seg.title = s;
      bar.append(seg);
      stateSegments[s] = seg;
      const f = el('button', '', s);
      f.type = 'button';
      f.dataset.state = s;
      filters.append(f);
      filterButtons[s] = f;
    }
    const pick = (ev) => {
      const b = ev.target.closest('button');
      if (!b) return;
      setFilter(filter === b.dataset.state ? '' : b.dataset.state);
    };
    states.addEventListener('click', pick);
    filters.addEventListener('click', pick);
    setFilter('');
  }

  function setFilter(state) {
    filter = state;
    for (const [s, b] of Object.entries(filterButtons)) b.setAttribute('aria-pressed', String(s === filter));
    for (const [s, b] of Object.entries(stateButtons)) b.setAttribute('aria-pressed', String(s === filter));
    refresher.now();
  }

  function renderOverview(o) {
    const q = o.queue || {};
    if (q.error) {
      setText($('queue-depth'), '?');
      setText($('queue-hint'), `queue “${q.name}”: ${q.error}`);
    } else {
      setText($('queue-depth'), fmt.format(q.depth));
      setText($('queue-hint'), `waiting in “${q.name}” · ${q.consumers} consumer${q.consumers === 1 ? '' : 's'}`);
    }
    const w = o.workers || {};
    setText($('workers-live'), fmt.format(w.live));
    let hint = w.live ? `${w.in_flight} of ${w.capacity} slots busy` : 'none running';
    if (w.draining) hint += ` · ${w.draining} draining`;
    setText($('workers-hint'), hint);
    const counts = o.jobs_by_state || {};
    const total = STATES.reduce((n, s) => n + (counts[s] || 0), 0);
    for (const s of STATES) {
      setText(stateButtons[s].firstChild, fmt.format(counts[s] || 0));
      setWidth(stateSegments[s], total ? (100 * (counts[s] || 0)) / total : 0);
    }
    const j = o.jobs || {};
    setText($('jobs-hint'), j.complete
      ? `· ${fmt.format(j.indexed)} in retention`
      : `· newest ${fmt.format(j.counted)} of ${fmt.format(j.indexed)}`);
  }

  // ---- recent jobs --------------------------------------------------------------------------

  const rows = new Map(); // id -> { tr, cells, doc }
  const knownDocs = new Map(); // id -> newest document seen (list or stream)

  // Where a document stands in its job's life: attempts (counted when a run starts), then the
  // phase within the attempt (waiting, running, waiting for a retry, over), then progress.
  function stage(d) {
    const phase = TERMINAL.has(d.status) ? 3 : d.status === 'running' ? 1 : d.attempts ? 2 : 0;
    return [d.attempts || 0, phase, d.progress ? Number(d.progress.percent) || 0 : -1];
  }
  // The stream may be ahead of the list or the other way round: keep the later document (the
  // second one when they stand level).
  function newer(a, b) {
    if (!a) return b;
    if (!b) return a;
    const [x, y] = [stage(a), stage(b)];
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] > y[i] ? a : b;
    return b;
  }

  function makeRow(id) {
    const tr = el('tr');
    tr.dataset.id = id;
    const cells = {
      id: el('td', 'id'),
      type: el('td'),
      status: el('span', 'pill'),
      bar: el('div', 'bar'),
      pct: el('span', 'pct'),
      message: el('span', 'cell-message'),
      created: el('td', 'muted'),
      took: el('td', 'num'),
    };
    const statusTd = el('td');
    statusTd.append(cells.status);
    const progressTd = el('td');
    const wrap = el('div', 'cell-progress');
    const track = el('div', 'progress');
    track.append(cells.bar);
    wrap.append(track, cells.pct);
    progressTd.append(wrap, cells.message);
    tr.append(cells.id, cells.type, statusTd, progressTd, cells.created, cells.took);
    setText(cells.id, id.slice(0, 8));
    cells.id.title = id;
    return { tr, cells, doc: null };
  }

  function paintRow(row, doc) {
    const c = row.cells;
    setText(c.type, doc.type);
    setText(c.status, doc.status);
    setClass(c.status, `pill s-${doc.status}`);
    const pct = percentOf(doc);
    setWidth(c.bar, pct);
    setClass(c.bar, `bar s-${doc.status}`);
    setText(c.pct, pct || doc.status === 'running' ? `${Math.floor(pct)}%` : '');
    const message = doc.error ? doc.error.detail || doc.error.title : (doc.progress && doc.progress.message) || '';
    setText(c.message, message);
    c.message.hidden = !message;
    setText(c.created, ago(doc.created_at));
    c.created.title = doc.created_at;
    setText(c.took, tookOf(doc));
    setClass(row.tr, row.tr.dataset.id === selectedId() ? 'selected' : '');
    row.doc = doc;
  }

  function percentOf(doc) {
    if (doc.status === 'succeeded') return 100;
    return doc.progress ? Number(doc.progress.percent) || 0 : 0;
  }
  function tookOf(doc) {
    if (doc.status === 'queued') {
      if (doc.next_attempt_at) return `retry at ${clock(doc.next_attempt_at)}`;
      return `${duration(Date.now() - ms(doc.created_at))} waiting`;
    }
    if (!doc.started_at) return '–';
    const end = doc.finished_at ? ms(doc.finished_at) : Date.now();
    return duration(end - ms(doc.started_at));
  }

  function renderJobs(docs) {
    const body = $('jobs-body');
    const seen = new Set();
    docs.forEach((listed, i) => {
      const doc = newer(knownDocs.get(listed.id), listed);
      knownDocs.set(doc.id, doc);
      seen.add(doc.id);
      let row = rows.get(doc.id);
      if (!row) {
        row = makeRow(doc.id);
        rows.set(doc.id, row);
      }
      paintRow(row, doc);
      if (body.children[i] !== row.tr) body.insertBefore(row.tr, body.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    for (const id of knownDocs.keys()) if (!seen.has(id) && id !== selectedId()) knownDocs.delete(id);
    $('jobs-empty').hidden = docs.length > 0;
  }

  // A document from the stream updates the job's row at once.
  function patchRow(doc) {
    knownDocs.set(doc.id, newer(knownDocs.get(doc.id), doc));
    const row = rows.get(doc.id);
    if (row) paintRow(row, knownDocs.get(doc.id));
  }

  // ---- workers ------------------------------------------------------------------------------

  const workerRows = new Map();
  function renderWorkers(list) {
    const body = $('workers-body');
    const seen = new Set();
    list.forEach((w, i) => {
      seen.add(w.id);
      let r = workerRows.get(w.id);
      if (!r) {
        const tr = el('tr');
        const cells = {
          id: el('td', 'id'), host: el('td'), state: el('span', 'pill'), bar: el('div', 'bar s-running'),
          busy: el('span', 'muted'), done: el('td', 'num'), started: el('td', 'muted'), seen: el('td', 'muted'), version: el('td', 'muted'),
        };
        const stateTd = el('td');
        stateTd.append(cells.state);
        const busyTd = el('td');
        const busy = el('span', 'busy');
        const track = el('div', 'progress');
        track.append(cells.bar);
        busy.append(track, cells.busy);
        busyTd.append(busy);
        tr.append(cells.id, cells.host, stateTd, busyTd, cells.done, cells.started, cells.seen, cells.version);
        r = { tr, cells };
        workerRows.set(w.id, r);
      }
      const c = r.cells;
      setText(c.id, w.id);
      setText(c.host, `${w.host} · pid ${w.pid}`);
      setText(c.state, w.state);
      setClass(c.state, `pill ${w.state === 'running' ? 's-succeeded' : 's-canceled'}`);
      setWidth(c.bar, w.concurrency ? (100 * w.in_flight) / w.concurrency : 0);
      setText(c.busy, `${w.in_flight} / ${w.concurrency}`);
      setText(c.done, fmt.format(w.jobs_done));
      setText(c.started, ago(w.started_at));
      setText(c.seen, ago(w.last_seen));
      setText(c.version, w.version);
      if (body.children[i] !== r.tr) body.insertBefore(r.tr, body.children[i] || null);
    });
    for (const [id, r] of workerRows) {
      if (!seen.has(id)) { r.tr.remove(); workerRows.delete(id); }
    }
    $('workers-empty').hidden = list.length > 0;
    setText($('workers-count'), list.length ? `${list.length} live` : '');
  }

  // ---- periodic refresh ---------------------------------------------------------------------

  let ticks = 0;
  async function refresh() {
    const query = `/v1/jobs?limit=${LIST_LIMIT}${filter ? `&status=${filter}` : ''}`;
    const wantWorkers = ticks++ % 2 === 0;
    const [overview, jobs, workers] = await Promise.allSettled([
      getJson('/v1/overview'),
      getJson(query),
      wantWorkers ? getJson('/v1/workers') : Promise.resolve(null),
    ]);
    if (overview.status === 'fulfilled') renderOverview(overview.value);
    if (jobs.status === 'fulfilled') renderJobs(jobs.value.jobs || []);
    if (workers.status === 'fulfilled' && workers.value) renderWorkers(workers.value.workers || []);
    if (watch && watch.doc) renderFacts(watch.doc); // "… ago" and "running for" move on
    const failed = [overview, jobs, workers].find((r) => r.status === 'rejected');
    if (!failed) {
      authTrouble = 0;
      $('banner').hidden = true;
      setConn('live', 'live');
    } else if (!authTrouble) {
      const e = failed.reason;
      setConn('down', e instanceof ApiError ? `server answered ${e.status}` : 'no answer from the server');
    }
  }

  // Runs `fn` every `period` ms, one run at a time, paused while the tab is hidden.
  function every(period, fn) {
    let timer = null;
    let running = false;
    let again = false; // asked for a run while one was under way
    async function tick() {
      timer = null;
      if (document.hidden) return; // visibilitychange starts it again
      running = true;
      again = false;
      try { await fn(); } catch (e) { console.warn('refresh failed', e); }
      running = false;
      if (timer) clearTimeout(timer);
      timer = setTimeout(tick, again ? 0 : period);
    }
    function now() {
      if (running) { again = true; return; }
      if (timer) clearTimeout(timer);
      tick();
    }
    document.addEventListener('visibilitychange', () => { if (!document.hidden) now(); });
    return { now };
  }
  let refresher = { now() {} };

  // ---- the selected job: one event stream ---------------------------------------------------

  let watch = null; // { id, controller, doc, history, terminal }
  const selectedId = () => (watch ? watch.id : '');

  function select(id) {
    if (watch && watch.id === id) return;
    if (watch) {
      watch.controller.abort();
      if (watch.result && watch.result.url) URL.revokeObjectURL(watch.result.url);
    }
    watch = { id, controller: new AbortController(), doc: null, history: [], terminal: false, result: undefined };
    if (location.hash !== `#${id}`) history.replaceState(null, '', `#${id}`);
    for (const [rid, row] of rows) setClass(row.tr, rid === id ? 'selected' : '');
    $('detail').hidden = false;
    setText($('detail-id'), id);
    $('detail-id').title = id;
    setText($('detail-type'), 'Job');
    setText($('detail-status'), 'loading…');
    setClass($('detail-status'), 'pill s-queued');
    setText($('detail-percent'), '');
    setWidth($('detail-bar'), 0);
    setText($('detail-message'), '\u00a0');
    $('detail-error').hidden = true;
    $('detail-result-wrap').hidden = true;
    $('cancel-button').hidden = true;
    $('detail-facts').replaceChildren();
    $('detail-history').replaceChildren();
    follow(watch);
  }

  // Reads the job's server-sent events with fetch (so the Authorization header goes along),
  // reconnecting with Last-Event-ID until the terminal event.
  async function follow(w) {
    const signal = w.controller.signal;
    let lastId = '';
    let backoff = 1000;
    while (!signal.aborted && !w.terminal) {
      try {
        const extra = { Accept: 'text/event-stream' };
        if (lastId) extra['Last-Event-ID'] = lastId;
        const res = await call(`/v1/jobs/${w.id}/events`, { headers: extra, signal });
        if (!res.ok) {
          const problem = await readBody(res);
          showStreamProblem(w, res.status, problem);
          if (res.status < 500) return; // gone, unknown or forbidden: retrying will not help
          throw new ApiError(res.status, problem);
        }
        backoff = 1000;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let cut;
          while ((cut = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const ev = parseEvent(block);
            if (ev.id) lastId = ev.id;
            if (ev.data && watch === w) onDocument(w, ev.event || 'message', JSON.parse(ev.data));
          }
        }
      } catch (e) {
        if (signal.aborted) return;
        console.warn('event stream interrupted', e);
      }
      if (!w.terminal && !signal.aborted) {
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
  }

  function parseEvent(block) {
    const ev = { data: '' };
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'data') ev.data += (ev.data ? '\n' : '') + value;
      else if (field === 'event' || field === 'id') ev[field] = value;
    }
    return ev;
  }

  function showStreamProblem(w, status, problem) {
    if (watch !== w) return;
    setText($('detail-status'), status === 404 ? 'not found' : status === 410 ? 'expired' : `error ${status}`);
    setClass($('detail-status'), 'pill s-failed');
    setText($('detail-message'), (problem && (problem.detail || problem.title)) || '');
  }

  // Every document the stream delivers: the first seeds the history from the document's own
  // timestamps; later ones add a line per status change and fold progress into the current one.
  function onDocument(w, kind, doc) {
    const prev = w.doc;
    w.doc = doc;
    if (!prev) {
      w.history = seedHistory(doc);
    } else if (prev.status !== doc.status || prev.attempts !== doc.attempts) {
      w.history.push(historyEntry(doc, prev));
      refresher.now(); // the counts by state moved
    } else if (kind === 'progress') {
      const last = w.history[w.history.length - 1];
      if (last) last.updates = (last.updates || 0) + 1;
    }
    const last = w.history[w.history.length - 1];
    if (last && doc.status === 'running' && doc.progress) last.progress = doc.progress;
    if (TERMINAL.has(doc.status)) {
      w.terminal = true;
      if (doc.status === 'succeeded') loadResult(w);
    }
    patchRow(doc);
    renderDetail(w);
  }

  const verb = { queued: 'submitted', running: 'started', succeeded: 'succeeded', failed: 'failed', canceled: 'canceled' };

  function seedHistory(doc) {
    const h = [{ state: 'queued', at: doc.created_at, what: 'submitted' }];
    if (doc.attempts > 1 && !(doc.status === 'queued' && doc.next_attempt_at)) {
      const n = doc.attempts - 1;
      h.push({ state: 'failed', at: null, what: `${n} earlier attempt${n === 1 ? '' : 's'} failed and ${n === 1 ? 'was' : 'were'} retried` });
    }
    if (doc.started_at) {
      h.push({ state: 'running', at: doc.started_at, what: doc.attempts > 1 ? `started (attempt ${doc.attempts})` : 'started' });
    }
    // When that attempt failed the document does not say.
    if (doc.status === 'queued' && doc.next_attempt_at) h.push(retryEntry(doc, null));
    if (TERMINAL.has(doc.status)) h.push(terminalEntry(doc));
    return h;
  }

  function historyEntry(doc, prev) {
    if (TERMINAL.has(doc.status)) return terminalEntry(doc);
    if (doc.status === 'running') {
      return { state: 'running', at: doc.started_at, what: doc.attempts > 1 ? `started (attempt ${doc.attempts})` : 'started' };
    }
    // Back to queued after a run: a retry.
    return prev.status === 'running' ? retryEntry(doc, new Date().toISOString()) : { state: 'queued', at: new Date().toISOString(), what: verb[doc.status] };
  }

  function retryEntry(doc, at) {
    const why = doc.error ? `: ${doc.error.detail || doc.error.title}` : '';
    return {
      state: 'queued',
      at,
      what: `attempt ${doc.attempts} failed, retry at ${clock(doc.next_attempt_at)}`,
      sub: why.slice(2),
    };
  }

  function terminalEntry(doc) {
    const sub = doc.error ? `${doc.error.title}: ${doc.error.detail}` : '';
    return { state: doc.status, at: doc.finished_at || new Date().toISOString(), what: verb[doc.status], sub };
  }

  async function loadResult(w) {
    try {
      const res = await call(`/v1/jobs/${w.id}/result`, { signal: w.controller.signal });
      if (!res.ok) return;
      // A result is whatever the job type answers: JSON is shown pretty, text as it is, an
      // image as an image; anything else (a PDF, an archive) is offered as a download.
      const type = res.headers.get('content-type') || 'application/json';
      const essence = type.split(';')[0].trim().toLowerCase();
      if (essence === 'application/json' || essence.endsWith('+json')) {
        const body = await readBody(res);
        w.result = { type, text: JSON.stringify(body, null, 2) };
      } else {
        const blob = await res.blob();
        const text = essence.startsWith('text/') ? await blob.text() : undefined;
        w.result = { type, size: blob.size, text, image: essence.startsWith('image/'), url: URL.createObjectURL(blob) };
      }
      if (watch === w) renderDetail(w);
    } catch (e) {
      if (!w.controller.signal.aborted) console.warn('result not loaded', e);
    }
  }

  function renderDetail(w) {
    const doc = w.doc;
    setText($('detail-type'), doc.type);
    setText($('detail-status'), doc.status);
    setClass($('detail-status'), `pill s-${doc.status}`);
    const pct = percentOf(doc);
    setText($('detail-percent'), pct || doc.status === 'running' ? `${Math.floor(pct)}%` : '');
    setWidth($('detail-bar'), pct);
    setClass($('detail-bar'), `bar s-${doc.status}`);
    let message = (doc.progress && doc.progress.message) || '';
    if (doc.status === 'queued') message = doc.next_attempt_at ? `waiting to be retried at ${clock(doc.next_attempt_at)}` : 'waiting for a worker';
    setText($('detail-message'), message || '\u00a0');
    const err = doc.error;
    $('detail-error').hidden = !err;
    if (err) {
      // An error on a job still pending is its last attempt's, and a retry is coming.
      const pending = !TERMINAL.has(doc.status);
      setClass($('detail-error'), pending ? 'problem warn' : 'problem');
      setText($('detail-error-title'), pending ? `Attempt ${doc.attempts} failed: ${err.title}` : err.title);
      setText($('detail-error-detail'), err.detail || '');
      setText($('detail-error-meta'), `${err.kind || ''}${err.retryable ? ' · retryable' : ''} · ${err.type}`);
    }
    $('cancel-button').hidden = TERMINAL.has(doc.status);
    renderFacts(doc);
    renderHistory(w);
    renderResult(w.result);
  }

  function renderResult(result) {
    $('detail-result-wrap').hidden = result === undefined;
    if (result === undefined) return;
    const text = result.text;
    $('detail-result').hidden = text === undefined;
    if (text !== undefined) setText($('detail-result'), text.length > 20000 ? `${text.slice(0, 20000)}\n…` : text);
    const image = $('detail-result-image');
    image.hidden = !result.image;
    if (result.image && image.getAttribute('src') !== result.url) image.src = result.url;
    const download = $('detail-result-download');
    download.hidden = !result.url;
    if (result.url) {
      download.href = result.url;
      download.download = `result-${watch ? watch.id : 'job'}`;
      setText(download, `Download (${result.type}, ${result.size} bytes)`);
    }
  }

  function renderFacts(doc) {
    const facts = [['Created', `${clock(doc.created_at)} (${ago(doc.created_at)})`]];
    if (doc.started_at && doc.attempts <= 1) facts.push(['Waited', duration(ms(doc.started_at) - ms(doc.created_at))]);
    if (doc.started_at && doc.status === 'running') facts.push(['Running for', tookOf(doc)]);
    if (doc.finished_at && TERMINAL.has(doc.status)) facts.push(['Ran', tookOf(doc)]);
    if (doc.finished_at) facts.push(['Finished', clock(doc.finished_at)]);
    facts.push(['Attempts', String(doc.attempts)]);
    if (doc.next_attempt_at) facts.push(['Next attempt', clock(doc.next_attempt_at)]);
    if (doc.callback) {
      const cb = doc.callback;
      facts.push(['Callback', `${cb.state}${cb.attempts ? ` after ${cb.attempts} attempt${cb.attempts === 1 ? '' : 's'}` : ''}${cb.last_status ? ` (HTTP ${cb.last_status})` : ''}`]);
    }
    const dl = $('detail-facts');
    const key = JSON.stringify(facts);
    if (dl.dataset.key === key) return;
    dl.dataset.key = key;
    dl.replaceChildren(...facts.flatMap(([k, v]) => [el('dt', '', k), el('dd', '', v)]));
  }

  function renderHistory(w) {
    const ol = $('detail-history');
    const t0 = ms(w.doc.created_at);
    w.history.forEach((h, i) => {
      let li = ol.children[i];
      if (!li) {
        li = el('li');
        li.append(el('span', 'when'), el('span', 'what'), el('span', 'sub'));
        ol.append(li);
      }
      setClass(li, `s-${h.state}`);
      const offset = ms(h.at) - t0;
      setText(li.children[0], h.at ? `${clock(h.at)}${i && Number.isFinite(offset) ? ` · +${duration(offset)}` : ''}` : '');
      setText(li.children[1], h.what);
      let sub = h.sub || '';
      if (h.progress && (h.progress.percent > 0 || h.progress.message)) {
        sub = `${Math.floor(h.progress.percent)}%${h.progress.message ? ` · ${h.progress.message}` : ''}`;
        if (h.updates) sub += ` · ${h.updates} progress update${h.updates === 1 ? '' : 's'} seen`;
      }
      setText(li.children[2], sub);
      li.children[2].hidden = !sub;
    });
    while (ol.children.length > w.history.length) ol.lastChild.remove();
  }

  async function cancelSelected() {
    const w = watch;
    if (!w) return;
    const button = $('cancel-button');
    button.disabled = true;
    try {
      const res = await call(`/v1/jobs/${w.id}`, { method: 'DELETE' });
      const body = await readBody(res);
      if (res.status === 409) setText($('detail-message'), 'already finished: nothing to cancel');
      else if (!res.ok) setText($('detail-message'), `cancel failed: ${(body && (body.detail || body.title)) || res.status}`);
      // The stream brings the canceled state. A queued job is canceled in this very answer,
      // which may still arrive after the stream's event: take it only if it is news.
      else if (body && body.id === w.id && watch === w && body.status === 'canceled'
        && w.doc && !TERMINAL.has(w.doc.status)) onDocument(w, 'status', body);
    } catch (e) {
      setText($('detail-message'), `cancel failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ---- submit -------------------------------------------------------------------------------

  // The types the workers registered (GET /v1/job-types, read with the caller's key): the
  // form offers each with its description and example input; a type no live worker serves
  // is marked (its jobs are accepted and wait in the queue).
  let jobTypes = [];
  async function loadJobTypes() {
    jobTypes = (await getJson('/v1/job-types')).job_types;
    const select = $('submit-type');
    const chosen = select.value;
    select.replaceChildren(...jobTypes.map((t) => {
      const o = el('option', '', t.workers > 0 ? t.name : `${t.name} (no live worker)`);
      o.value = t.name;
      return o;
    }));
    if (!jobTypes.length) {
      showSubmitError('No job type is registered yet: start a worker.', []);
      return;
    }
    const names = jobTypes.map((t) => t.name);
    if (names.includes(chosen)) select.value = chosen;
    else if (names.includes('sleep')) select.value = 'sleep';
    onTypeChange();
  }

  function onTypeChange() {
    const t = jobTypes.find((x) => x.name === $('submit-type').value);
    if (!t) return;
    const note = t.workers > 0 ? '' : ' No live worker serves it now: its jobs wait in the queue.';
    setText($('submit-desc'), t.description.replace(/`/g, '') + note);
    $('submit-input').value = JSON.stringify(t.example);
    $('submit-error').hidden = true;
  }

  function showSubmitError(title, items) {
    const box = $('submit-error');
    box.replaceChildren(el('strong', '', title));
    if (items && items.length) {
      const ul = el('ul');
      for (const item of items) ul.append(el('li', '', item));
      box.append(ul);
    }
    box.hidden = false;
  }

  async function submit(ev) {
    ev.preventDefault();
    $('submit-error').hidden = true;
    let input;
    try {
      input = JSON.parse($('submit-input').value || 'null');
    } catch (e) {
      showSubmitError('The input is not valid JSON.', [e.message]);
      return;
    }
    const body = { type: $('submit-type').value, input };
    const priority = Number($('submit-priority').value || 0);
    if (priority) body.priority = priority;
    const button = $('submit-button');
    button.disabled = true;
    try {
      const res = await call('/v1/jobs', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      const answer = await readBody(res);
      if (res.status === 202) {
        // The status monitor's URL is the answer's Location; its last segment is the job id.
        const location = res.headers.get('Location') || '';
        const id = location.split('/').pop() || (answer && answer.id);
        select(id);
        refresher.now();
      } else {
        const errors = (answer && answer.errors) || [];
        showSubmitError((answer && (answer.detail || answer.title)) || `HTTP ${res.status}`,
          errors.map((e) => `${e.field}: ${e.detail}`));
      }
    } catch (e) {
      showSubmitError('The server did not answer.', [e.message]);
    } finally {
      button.disabled = false;
    }
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    buildStatic();
    showKeyState();
    $('key-input').value = apiKey();
    $('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      try { sessionStorage.setItem(KEY_STORAGE, $('key-input').value.trim()); } catch { /* private mode */ }
      afterKeyChange();
    });
    $('key-clear').addEventListener('click', () => {
      try { sessionStorage.removeItem(KEY_STORAGE); } catch { /* private mode */ }
      $('key-input').value = '';
      afterKeyChange();
    });
    $('jobs-body').addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr');
      if (tr && tr.dataset.id) select(tr.dataset.id);
    });
    $('submit-type').addEventListener('change', onTypeChange);
    $('submit-form').addEventListener('submit', submit);
    $('cancel-button').addEventListener('click', cancelSelected);
    refresher = every(REFRESH_MS, refresh);
    refresher.now();
    loadJobTypes().catch((e) => showSubmitError('Could not load the job types.', [e.message]));
    const id = location.hash.slice(1);
    if (/^[0-9a-f-]{36}$/.test(id)) select(id);
  }

  function afterKeyChange() {
    showKeyState();
    $('key').open = false;
    authTrouble = 0;
    $('banner').hidden = true;
    setConn('connecting', 'connecting…');
    refresher.now();
    loadJobTypes().catch((e) => showSubmitError('Could not load the job types.', [e.message]));
    if (watch) {
      const id = watch.id;
      watch.controller.abort();
      watch = null;
      select(id);
    }
  }

  start();
})();
