/** The console page's stylesheet (inline in the page, allowed by its hash in the CSP). */
export const CONSOLE_CSS = `
:root { color-scheme: light dark; --fg: #1d2330; --muted: #5f6b7a; --bg: #f6f7f9; --card: #fff; --line: #dde1e7;
  --ok: #16794c; --ok-bg: #e3f5ea; --off: #8a94a3; --off-bg: #eceff3; --bad: #b42318; --bad-bg: #fdecea; --accent: #2f5fd0; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e4e8ee; --muted: #9aa5b4; --bg: #14171c; --card: #1c2027; --line: #2c323c;
    --ok: #58d39b; --ok-bg: #173a2a; --off: #8a94a3; --off-bg: #262b33; --bad: #ff8a80; --bad-bg: #3d1d1b; --accent: #8fb0ff; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 16px; padding: 10px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
header .spacer { flex: 1; }
main { padding: 16px 20px; display: grid; gap: 16px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; overflow-x: auto; }
section h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 0 0 8px; font-weight: 600; }
section h2 .count { font-weight: 400; margin-left: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-top: 1px solid var(--line); vertical-align: top; }
th { border-top: 0; color: var(--muted); font-weight: 500; font-size: 12px; white-space: nowrap; }
td.mono, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px; }
.id { max-width: 10em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; display: inline-block; vertical-align: bottom; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 500; white-space: nowrap; }
.badge.online { color: var(--ok); background: var(--ok-bg); }
.badge.offline, .badge.unpublished { color: var(--off); background: var(--off-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.chip { display: inline-block; padding: 0 6px; margin: 1px 4px 1px 0; border: 1px solid var(--line); border-radius: 4px; font-size: 12px; }
.chip.tag { color: var(--accent); border-color: var(--accent); }
.muted { color: var(--muted); }
.small { font-size: 12px; }
.tags:empty { display: none; }
.empty { color: var(--muted); font-style: italic; }
.path { white-space: normal; }
.path .kind-direct { color: var(--ok); }
.path .kind-relay { color: var(--accent); }
.live { font-size: 12px; }
.live.on::before { content: "\\25CF "; color: var(--ok); }
.live.off::before { content: "\\25CF "; color: var(--bad); }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 12px/1.4 ui-monospace, Menlo, monospace; max-height: 16em; overflow: auto; }
button, select, input { font: inherit; color: inherit; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; }
button { cursor: pointer; }
button:hover { border-color: var(--accent); }
.login { max-width: 380px; margin: 12vh auto; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 24px; display: grid; gap: 12px; }
.login h1 { font-size: 18px; margin: 0; }
.login input { width: 100%; padding: 8px 10px; }
.error { color: var(--bad); min-height: 1.4em; }
.grid2 { display: grid; gap: 16px; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }
.hidden { display: none; }
tr.changed td { animation: flash 1.5s ease-out; }
@keyframes flash { from { background: var(--ok-bg); } to { background: transparent; } }
`;
