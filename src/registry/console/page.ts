import { createHash } from 'node:crypto';
import { CONSOLE_JS } from './page-script.js';
import { CONSOLE_CSS } from './page-style.js';

/**
 * The console page: one static document with its style and script inline, no external asset
 * (it works offline, and nothing is fetched from anywhere but the registry). The same bytes for
 * everyone: no data is in it (the script fetches that), so it can carry no injected markup.
 */

const sha256 = (text: string) => `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;

/**
 * Only the page's own script and style run (by hash: no inline handler, no injected script, no
 * eval); it talks to its own origin only, loads nothing else, and cannot be framed.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  `script-src ${sha256(CONSOLE_JS)}`,
  `style-src ${sha256(CONSOLE_CSS)}`,
  "connect-src 'self'",
  "img-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

export const CONSOLE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>agentvpn console</title>
<style>${CONSOLE_CSS}</style>
</head>
<body>
<form id="login-form" class="login hidden" autocomplete="off">
  <h1>agentvpn console</h1>
  <label for="token">Admin token</label>
  <input id="token" type="password" autocomplete="off" placeholder="avadm_..." spellcheck="false">
  <button type="submit">Log in</button>
  <div id="login-error" class="error" aria-live="polite"></div>
  <div class="muted">Create one with <span class="mono">agentvpn registry admin-token create</span>.</div>
</form>
<div id="app" class="hidden">
<header>
  <h1>agentvpn console</h1>
  <label>network <select id="network"></select></label>
  <span id="live" class="live off" data-live="false">not connected</span>
  <span class="spacer"></span>
  <span id="stats" class="muted"></span>
  <button id="logout" type="button">Log out</button>
</header>
<main>
<section>
  <h2>Agents <span id="agents-count" class="count"></span></h2>
  <table>
    <thead><tr><th>Name and ID</th><th>State, last seen</th><th>Overlay addresses</th><th>Endpoints</th><th>Tags and capabilities</th><th>Paths (as reported)</th></tr></thead>
    <tbody id="agents"></tbody>
  </table>
</section>
<div class="grid2">
<section>
  <h2>Alerts <span id="alerts-count" class="count"></span></h2>
  <ul id="alerts"></ul>
</section>
<section>
  <h2>Policy <span id="policy-meta" class="count"></span></h2>
  <pre id="policy"></pre>
</section>
</div>
<section>
  <h2>Join tokens <span id="tokens-count" class="count"></span></h2>
  <table>
    <thead><tr><th>Token (hash)</th><th>State</th><th>Created</th><th>Expires</th><th>Uses left</th><th>Tags</th></tr></thead>
    <tbody id="tokens"></tbody>
  </table>
</section>
<section>
  <h2>Registry audit log <span id="audit-count" class="count"></span></h2>
  <table>
    <thead><tr><th>Seq</th><th>Time (UTC)</th><th>Type</th><th>Subject and details</th></tr></thead>
    <tbody id="audit"></tbody>
  </table>
</section>
</main>
</div>
<script>${CONSOLE_JS}</script>
</body>
</html>
`;
