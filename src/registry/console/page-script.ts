/**
 * The console page's script (inline in the page, allowed by its hash in the CSP). Everything it
 * shows is built with createElement and textContent: agent names, tags, capabilities, policy
 * text and audit details are attacker- or operator-chosen strings and never become markup.
 * Agents come from the registry's event stream (a snapshot, then changes); the rest (members,
 * reported paths, tokens, policy, audit) is polled. A dropped or silent stream is reopened with backoff.
 * Written without template literals or backticks, as it lives inside one.
 */
export const CONSOLE_JS = String.raw`
'use strict';
const POLL_MS = 5000;
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
/** The registry sends a keep-alive every 15 s: three missed ones mean the connection is dead. */
const STREAM_IDLE_MS = 45000;
/** Changes arriving within this window are drawn together (a fleet restarting sends thousands). */
const RENDER_COALESCE_MS = 50;
const S = { network: '', views: new Map(), members: new Map(), paths: {}, skew: 0, stream: null, backoff: BACKOFF_MIN_MS, retry: null, poll: null, changed: new Set(), renderQueued: false };
const ATTRS = new Set(['class', 'title', 'type', 'id', 'for', 'autocomplete', 'placeholder', 'name', 'colspan', 'value', 'aria-live']);

function el(tag, props) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = String(v);
    else if (ATTRS.has(k) || k.startsWith('data-')) e.setAttribute(k, String(v));
    else throw new Error('attribute not allowed: ' + k);
  }
  for (let i = 2; i < arguments.length; i++) add(e, arguments[i]);
  return e;
}
function add(parent, kid) {
  if (kid === null || kid === undefined || kid === false) return;
  if (Array.isArray(kid)) { for (const k of kid) add(parent, k); return; }
  parent.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
}
const $ = (id) => document.getElementById(id);
function fill(id, ...kids) { const e = $(id); e.replaceChildren(); add(e, kids); return e; }

function ago(ms) {
  if (ms === null || ms === undefined) return 'never';
  const s = Math.max(0, Math.round((Date.now() + S.skew - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}
const time = (ms) => ms === null || ms === undefined ? 'never' : new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
const chips = (list, kind) => (list || []).length ? list.map((t) => el('span', { class: 'chip mono ' + (kind || ''), text: t })) : kind === 'tag' ? null : el('span', { class: 'muted', text: '-' });
const shortId = (id) => el('span', { class: 'mono id', title: id, text: id });
function nameOf(id) {
  const v = S.views.get(id);
  if (v) return v.record.name;
  const m = S.members.get(id);
  return m ? m.name : id.slice(0, 12) + '\u2026';
}

async function api(path, init) {
  const r = await fetch(path, Object.assign({ credentials: 'same-origin', cache: 'no-store' }, init || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok || !body || body.ok !== true) {
    const err = new Error(body && body.message ? body.message : 'HTTP ' + r.status);
    err.status = r.status;
    throw err;
  }
  return body;
}
const post = (path, headers) => api(path, { method: 'POST', headers: Object.assign({ 'X-AgentVPN-Console': '1' }, headers || {}) });

function showLogin(message) {
  stopLive();
  $('app').classList.add('hidden');
  $('login-form').classList.remove('hidden');
  $('login-error').textContent = message || '';
  $('token').focus();
}
function showApp() {
  $('login-form').classList.add('hidden');
  $('app').classList.remove('hidden');
}
function stopLive() {
  const stream = S.stream;
  S.stream = null;
  if (stream) stream.abort();
  clearTimeout(S.retry);
  clearInterval(S.poll);
  S.poll = null;
  setLive(false, 'not connected');
}
function setLive(on, text) {
  const e = $('live');
  e.className = 'live ' + (on ? 'on' : 'off');
  e.textContent = text;
  e.setAttribute('data-live', on ? 'true' : 'false');
}

async function login(ev) {
  ev.preventDefault();
  const input = $('token');
  const token = input.value.trim();
  input.value = '';
  if (!token) return;
  try {
    await post('/console/api/login', { Authorization: 'Bearer ' + token });
    await start();
  } catch (e) {
    $('login-error').textContent = e.status === 401 ? 'that is not a valid admin token'
      : e.status === 429 ? 'too many wrong tokens from this address: wait a second and try again' : e.message;
  }
}
async function logout() {
  try { await post('/console/api/logout'); } catch (e) { /* the session ends either way */ }
  showLogin('logged out');
}

/** Loads the polled state; a 401 means the session ended. */
async function refresh() {
  try {
    const s = await api('/console/api/state?network=' + encodeURIComponent(S.network));
    S.skew = s.now - Date.now();
    if (!S.network) S.network = s.network;
    render(s);
    return true;
  } catch (e) {
    if (e.status === 401) showLogin('your session ended: log in again');
    else setLive(false, 'registry unreachable: ' + e.message);
    return false;
  }
}
async function start() {
  if (!(await refresh())) return;
  showApp();
  void connect();
  clearInterval(S.poll);
  S.poll = setInterval(() => void refresh(), POLL_MS);
}

/** Applies one event of the registry's stream (events.ts has the table). */
function onEvent(kind, data) {
  const d = JSON.parse(data);
  if (kind === 'snapshot') {
    S.views = new Map(d.agents.map((v) => [v.record.id, v]));
    S.backoff = BACKOFF_MIN_MS;
    setLive(true, 'live');
  } else if (kind === 'upsert' || kind === 'online' || kind === 'offline') {
    S.views.set(d.agent.record.id, d.agent);
    S.changed.add(d.agent.record.id);
  } else if (kind === 'removed') {
    S.views.delete(d.id);
    S.members.delete(d.id);
  } else if (kind === 'policy') {
    void refresh();
    return;
  } else {
    return;
  }
  scheduleRender();
}

function scheduleRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  setTimeout(() => {
    S.renderQueued = false;
    renderAgents();
  }, RENDER_COALESCE_MS);
}

/**
 * Reads the event stream with fetch rather than EventSource: it sees the registry's keep-alive
 * comments, so a stream silent for STREAM_IDLE_MS (a half-open connection) is dropped and
 * reopened, and a 401 (the session ended) is told from a network error.
 */
async function connect() {
  if (S.stream) S.stream.abort();
  const ctl = new AbortController();
  S.stream = ctl;
  let idle = null;
  const alive = () => { clearTimeout(idle); idle = setTimeout(() => ctl.abort(), STREAM_IDLE_MS); };
  try {
    const r = await fetch('/console/api/events?network=' + encodeURIComponent(S.network), { credentials: 'same-origin', cache: 'no-store', signal: ctl.signal, headers: { Accept: 'text/event-stream' } });
    if (r.status === 401) {
      if (S.stream === ctl) showLogin('your session ended: log in again');
      return;
    }
    if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
    alive();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let scanned = 0;
    let kind = '';
    let data = [];
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      alive();
      buf += chunk.value;
      let start = 0;
      for (let nl = buf.indexOf('\n', scanned); nl >= 0; nl = buf.indexOf('\n', start)) {
        const line = buf.slice(start, nl).replace(/\r$/, '');
        start = nl + 1;
        if (line === '') {
          if (data.length) onEvent(kind || 'message', data.join('\n'));
          kind = '';
          data = [];
        } else if (line.startsWith('event:')) kind = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      buf = buf.slice(start);
      scanned = buf.length;
    }
  } catch (e) {
    // Dropped, aborted (idle, or replaced by a newer stream) or unreachable: reconnect below.
  } finally {
    clearTimeout(idle);
  }
  if (S.stream === ctl) {
    S.stream = null;
    reconnectLater();
  }
}

/** After a dropped stream: wait (doubling up to BACKOFF_MAX_MS), check the session and state, then reopen it. */
function reconnectLater() {
  const wait = S.backoff;
  S.backoff = Math.min(S.backoff * 2, BACKOFF_MAX_MS);
  setLive(false, 'reconnecting in ' + Math.round(wait / 1000) + ' s');
  clearTimeout(S.retry);
  S.retry = setTimeout(async () => {
    if (await refresh()) void connect();
    else if (!$('app').classList.contains('hidden')) reconnectLater();
  }, wait);
}

function render(s) {
  S.members = new Map(s.members.map((m) => [m.id, m]));
  S.paths = s.paths;
  const sel = $('network');
  sel.replaceChildren();
  for (const n of s.networks.includes(s.network) ? s.networks : [s.network].concat(s.networks)) add(sel, el('option', { value: n, text: n }));
  sel.value = s.network;
  renderAgents();
  renderAlerts(s);
  renderPolicy(s.policy);
  renderTokens(s.tokens);
  renderAudit(s.audit);
  fill('stats', 'requests ' + s.stats.requests + ' \u00b7 event streams ' + s.stats.streams.open + ' \u00b7 connections ' + s.stats.connections.open
    + ' \u00b7 path reports ' + s.pathReports.accepted + ' kept, ' + s.pathReports.refused + ' refused');
}

function pathCell(id) {
  const r = S.paths[id];
  if (!r || r.paths.length === 0) return el('span', { class: 'muted', text: r ? 'no peers' : 'not reported' });
  return el('div', null, r.paths.map((p) => el('div', { class: 'path', 'data-peer': p.peer, 'data-kind': p.kind },
    el('b', { text: nameOf(p.peer) }), ' ', el('span', { class: 'kind-' + p.kind, text: p.kind }),
    p.rttMs === null ? '' : ' ' + p.rttMs.toFixed(2) + ' ms', ' ', el('span', { class: 'mono muted', text: p.endpoint }))),
  el('div', { class: 'muted small', text: 'reported ' + ago(r.at) }));
}

function renderAgents() {
  const ids = new Set([...S.views.keys(), ...S.members.keys()]);
  const rows = [...ids].map((id) => {
    const v = S.views.get(id);
    const m = S.members.get(id);
    const rec = v ? v.record : null;
    const name = rec ? rec.name : m.name;
    const state = v ? (v.online ? 'online' : 'offline') : 'unpublished';
    const tr = el('tr', { 'data-agent-id': id, 'data-agent-name': name, 'data-state': state, class: S.changed.has(id) ? 'changed' : null },
      el('td', null, el('div', null, el('b', { class: 'name', text: name })), shortId(id)),
      el('td', null, el('div', null, el('span', { class: 'badge state ' + state, text: state })), el('div', { class: 'muted small last-seen', text: v ? ago(v.lastSeen) : '' })),
      el('td', { class: 'mono' }, el('div', { text: rec ? rec.ipv4 : m.ipv4 }), rec ? el('div', { text: rec.ipv6 }) : null),
      el('td', { class: 'mono endpoints' }, rec && rec.endpoints.length ? rec.endpoints.map((e) => el('div', { text: e })) : el('span', { class: 'muted', text: '-' })),
      el('td', null, el('div', { class: 'tags' }, chips(v ? v.tags : m.tags, 'tag')), el('div', { class: 'caps' }, chips(rec ? rec.capabilities : []))),
      el('td', { class: 'paths' }, pathCell(id)));
    return { name, state, tr };
  });
  S.changed.clear();
  rows.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  const online = rows.filter((r) => r.state === 'online').length;
  fill('agents-count', online + ' online of ' + rows.length);
  fill('agents', rows.length ? rows.map((r) => r.tr) : el('tr', null, el('td', { colspan: 6, class: 'empty', text: 'no agents have joined this network' })));
}

function renderAlerts(s) {
  const items = [];
  if (s.audit && s.audit.damage) items.push(el('li', null, el('span', { class: 'badge bad', text: 'log damaged' }), ' ', s.audit.damage));
  for (const r of s.refusals) items.push(el('li', null, el('span', { class: 'badge bad', text: 'audit fork' }), ' ', el('b', { text: nameOf(r.agent) }), ' ', time(r.at), ': ', r.reason));
  for (const b of s.blocked) items.push(el('li', null, el('span', { class: 'badge bad', text: 'blocked' }), ' ', el('b', { text: b.name || b.id }), ' ', shortId(b.id), ' since ', time(b.blockedAt)));
  const refused = Object.entries(s.stats.refused).filter(([code]) => /SIGNATURE|UNAUTHORIZED|REPLAYED|RATE_LIMITED|BAD_TOKEN|CHAIN/.test(code));
  if (refused.length) items.push(el('li', null, el('span', { class: 'badge bad', text: 'refused' }), ' ', refused.map(([c, n]) => c + ' \u00d7' + n).join(', ')));
  fill('alerts-count', String(items.length));
  fill('alerts', items.length ? items : el('li', { class: 'empty', text: 'nothing needs attention' }));
}

function renderPolicy(p) {
  fill('policy-meta', p ? 'version ' + p.version + ', set ' + time(p.setAt) : 'no policy: every member may reach every other');
  fill('policy', p ? p.text : '');
}

function renderTokens(tokens) {
  fill('tokens-count', String(tokens.length));
  fill('tokens', tokens.length ? tokens.map((t) => el('tr', { 'data-token': t.id },
    el('td', { class: 'mono', text: t.id }),
    el('td', null, el('span', { class: 'badge ' + (t.usable ? 'online' : 'offline'), text: t.usable ? 'usable' : 'spent' })),
    el('td', { text: time(t.createdAt) }),
    el('td', { text: t.expiresAt === null ? 'never' : time(t.expiresAt) }),
    el('td', { text: t.usesLeft === null ? 'unlimited' : String(t.usesLeft) }),
    el('td', null, chips(t.tags)))) : el('tr', null, el('td', { colspan: 6, class: 'empty', text: 'no join tokens' })));
}

function renderAudit(a) {
  if (!a) {
    fill('audit-count', '');
    fill('audit', el('tr', null, el('td', { colspan: 4, class: 'empty', text: 'this registry keeps no audit log (run it with --db)' })));
    return;
  }
  fill('audit-count', a.size + ' entries, newest ' + a.entries.length + ' shown');
  fill('audit', a.entries.map((e) => el('tr', null,
    el('td', { class: 'mono', text: e.seq }),
    el('td', { class: 'mono', text: e.time.replace('T', ' ').replace(/\.\d+Z$/, '') }),
    el('td', { class: 'mono', text: e.type }),
    el('td', null, el('span', { class: 'mono', text: e.subject }), ' ', el('span', { class: 'muted mono', text: JSON.stringify(e.details) })))));
}

$('login-form').addEventListener('submit', login);
$('logout').addEventListener('click', () => void logout());
$('network').addEventListener('change', (ev) => {
  S.network = ev.target.value;
  S.views = new Map();
  void start();
});
void (async () => {
  try {
    await api('/console/api/session');
    await start();
  } catch (e) {
    showLogin(e.status === 401 ? '' : e.message);
  }
})();
`;
