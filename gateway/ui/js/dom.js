// Small DOM and formatting helpers. Text always goes in as text (never as HTML), so nothing
// a function returns or logs can run as script in the page.

/**
 * Makes an element: h('a', {href: '/ui/', class: 'link'}, 'text', child, ...).
 * Attributes: `class`, `dataset` (object), `on` (object of event handlers), boolean `true`
 * for present-without-value, `false`/null/undefined for absent; anything else as a string.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets the text of `el` only when it differs (no needless layout work). */
export function setText(el, text) {
  const value = String(text);
  if (el.textContent !== value) el.textContent = value;
}

/** 1536 → "1.5 KiB". */
export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/** A duration in ms, readable: "0.42 ms", "12 ms", "1.3 s". */
export function ms(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value < 1) return `${value.toFixed(2)} ms`;
  if (value < 100) return `${value.toFixed(1)} ms`;
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(value < 10000 ? 2 : 1)} s`;
  return `${(value / 60000).toFixed(1)} min`;
}

/** The overview's p50: below the histogram's first bound only "< 5 ms" is known. */
export function p50(value) {
  if (value === null || value === undefined) return '—';
  return value <= 5 ? '< 5 ms' : `≈ ${ms(value)}`;
}

/** Millicores as cores: "0.25 cores", "12 m". */
export function cpu(millis) {
  if (millis === null || millis === undefined) return '—';
  if (millis < 1) return '0 m';
  if (millis < 1000) return `${Math.round(millis)} m`;
  return `${(millis / 1000).toFixed(2)} cores`;
}

/** A ratio as a percentage, "—" without invocations. */
export function percent(part, whole) {
  if (!whole) return '—';
  const p = (100 * part) / whole;
  if (p === 0) return '0 %';
  return p < 0.1 ? '< 0.1 %' : `${p < 10 ? p.toFixed(1) : Math.round(p)} %`;
}

/** A number with thousands separated. */
export function count(n) {
  return Number(n || 0).toLocaleString('en-US');
}

/** "12:03:04" for today, else "Mar 3 12:03". */
export function clock(msSinceEpoch) {
  const d = new Date(msSinceEpoch);
  const now = new Date();
  const time = d.toLocaleTimeString('en-GB', { hour12: false });
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.toLocaleDateString('en-GB', { month: 'short', day: 'numeric' })} ${time}`;
}

/** "3 s ago", "5 min ago", "2 h ago". */
export function ago(msSinceEpoch) {
  const s = Math.max(0, Math.round((Date.now() - msSinceEpoch) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** The words of a function state, and the class of its badge. */
export const STATES = {
  ready: ['ready', 'ok'],
  'scaled-to-zero': ['scaled to zero', 'idle'],
  // Replicas finishing their requests after a scale to zero.
  stopping: ['stopping', 'busy'],
  starting: ['starting', 'busy'],
  updating: ['updating', 'busy'],
  'crash-looping': ['crash-looping', 'bad'],
  // In a cluster: no board can run it (the function's message says why).
  unplaced: ['unplaced', 'bad'],
};

/** A state badge. */
export function stateBadge(state) {
  const [words, kind] = STATES[state] || [state || 'unknown', 'idle'];
  return h('span', { class: `badge badge-${kind}`, dataset: { state: state || '' } }, words);
}

/** The class of an HTTP status: ok, warn (4xx), bad (5xx). */
export function statusKind(status) {
  if (status >= 500 || status === 0) return 'bad';
  if (status >= 400) return 'warn';
  return 'ok';
}

/** A `<dialog>` asking to confirm; resolves true when confirmed. */
export function confirmDialog({ title, text, confirm, danger = false }) {
  return new Promise((resolve) => {
    const dialog = h(
      'dialog',
      { class: 'dialog', 'aria-labelledby': 'dialog-title' },
      h(
        'form',
        { method: 'dialog' },
        h('h2', { id: 'dialog-title' }, title),
        h('p', {}, text),
        h(
          'div',
          { class: 'actions' },
          h('button', { value: 'cancel', class: 'button', type: 'submit' }, 'Cancel'),
          h(
            'button',
            { value: 'confirm', class: `button ${danger ? 'button-danger' : 'button-primary'}`, type: 'submit' },
            confirm,
          ),
        ),
      ),
    );
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'confirm');
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
