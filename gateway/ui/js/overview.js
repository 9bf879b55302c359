// The overview: this board (or the cluster's boards), and every function with its state,
// replicas, invocations, error rate, p50, memory and CPU, updated live. Rows are updated in
// place, so nothing jumps while figures stream in.

import { stream } from './api.js';
import { bytes, count, cpu, fill, h, p50, percent, setText, stateBadge } from './dom.js';

const COLUMNS = [
  ['name', 'Function'],
  ['state', 'State'],
  ['replicas', 'Replicas'],
  ['invocations', 'Invocations'],
  ['errors', 'Errors'],
  ['p50', 'p50'],
  ['memory', 'Memory'],
  ['cpu', 'CPU'],
];

export function renderOverview(main) {
  const nodeLine = h('p', { class: 'subtitle' }, '\u00a0');
  const stats = {
    functions: stat('Functions'),
    ready: stat('Ready'),
    invocations: stat('Invocations'),
    errors: stat('Error rate'),
  };
  const boards = h('div', { class: 'boards', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const empty = h(
    'div',
    { class: 'empty', hidden: true },
    h('p', {}, 'No functions yet.'),
    h('a', { class: 'button button-primary', href: '/ui/deploy' }, 'Deploy a function'),
  );
  const table = h(
    'table',
    { class: 'table table-cards functions', 'aria-describedby': 'functions-title' },
    h('thead', {}, h('tr', {}, COLUMNS.map(([key, label]) => h('th', { scope: 'col', class: `col-${key}` }, label)))),
    tbody,
  );
  // Placeholder rows keep the table's height until the first data arrives.
  for (let i = 0; i < 3; i += 1) tbody.append(skeletonRow());

  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Overview'), nodeLine),
    h('section', { class: 'stats', 'aria-label': 'Totals' }, Object.values(stats).map((s) => s.el)),
    h('section', { 'aria-labelledby': 'boards-title' }, h('h2', { id: 'boards-title' }, 'Boards'), boards),
    h(
      'section',
      { 'aria-labelledby': 'functions-title' },
      h('div', { class: 'section-head' }, h('h2', { id: 'functions-title' }, 'Functions'), h('a', { class: 'button', href: '/ui/deploy' }, 'Deploy')),
      h('div', { class: 'table-wrap' }, table),
      empty,
    ),
  );

  const rows = new Map();
  const update = (overview) => {
    const { node, functions } = overview;
    setText(nodeLine, `${node.name} · ${node.arch} · bramble ${node.version}${node.healthy ? '' : ` · ${node.problem || 'unhealthy'}`}`);
    nodeLine.classList.toggle('text-bad', !node.healthy);
    const total = functions.reduce((n, f) => n + f.invocations, 0);
    const errors = functions.reduce((n, f) => n + f.errors, 0);
    stats.functions.set(count(functions.length));
    stats.ready.set(count(functions.filter((f) => f.state === 'ready').length));
    stats.invocations.set(count(total));
    stats.errors.set(percent(errors, total));
    renderBoards(boards, overview);
    for (const el of tbody.querySelectorAll('.skeleton')) el.remove();
    const seen = new Set();
    functions.forEach((f, index) => {
      const key = `${f.name}.${f.namespace}`;
      seen.add(key);
      let row = rows.get(key);
      if (!row) {
        row = functionRow(f);
        rows.set(key, row);
      }
      if (tbody.children[index] !== row.tr) tbody.insertBefore(row.tr, tbody.children[index] || null);
      row.update(f);
    });
    for (const [key, row] of rows) {
      if (!seen.has(key)) {
        row.tr.remove();
        rows.delete(key);
      }
    }
    empty.hidden = functions.length > 0;
    table.hidden = functions.length === 0;
  };
  return stream('', { overview: update });
}

function stat(label) {
  const value = h('span', { class: 'stat-value' }, '—');
  return {
    el: h('div', { class: 'card stat' }, h('span', { class: 'stat-label' }, label), value),
    set: (text) => setText(value, text),
  };
}

function skeletonRow() {
  return h('tr', { class: 'skeleton', 'aria-hidden': 'true' }, COLUMNS.map(() => h('td', {}, h('span', { class: 'skeleton-bar' }))));
}

function functionRow(f) {
  const cells = Object.fromEntries(COLUMNS.map(([key, label]) => [key, h('td', { class: `col-${key}`, dataset: { label } })]));
  const link = h('a', { href: `/ui/functions/${encodeURIComponent(`${f.name}.${f.namespace}`)}` }, f.name);
  const ns = h('span', { class: 'muted small' });
  fill(cells.name, link, ' ', ns, h('div', { class: 'muted small image' }));
  const tr = h('tr', { dataset: { function: `${f.name}.${f.namespace}` } }, Object.values(cells));
  let lastState = null;
  const reason = h('div', { class: 'reason small' });
  return {
    tr,
    update(f) {
      setText(ns, f.namespace === 'openfaas-fn' ? '' : f.namespace);
      setText(cells.name.querySelector('.image'), f.image);
      const why = [f.lastExit && `last exit: ${f.lastExit}`, f.message].filter(Boolean).join(' — ');
      if (f.state !== lastState) {
        fill(cells.state, stateBadge(f.state), reason);
        lastState = f.state;
      }
      setText(reason, ['crash-looping', 'starting', 'unplaced'].includes(f.state) ? why : '');
      reason.hidden = !reason.textContent;
      setText(cells.replicas, `${f.available}/${f.replicas}`);
      setText(cells.invocations, count(f.invocations));
      setText(cells.errors, percent(f.errors, f.invocations));
      cells.errors.classList.toggle('text-bad', f.errors > 0);
      setText(cells.p50, p50(f.p50Ms));
      setText(cells.memory, f.memoryBytes === undefined ? '—' : bytes(f.memoryBytes));
      setText(cells.cpu, cpu(f.cpuMillis));
    },
  };
}

/** The boards of the cluster, or this board alone. */
function renderBoards(container, { node, boards, functions }) {
  const list = boards || [
    {
      name: node.name,
      state: node.healthy ? 'alive' : 'suspect',
      arch: node.arch,
      thisBoard: true,
      functions: functions.filter((f) => f.available > 0).map((f) => `${f.name}.${f.namespace}`),
      single: true,
    },
  ];
  const key = JSON.stringify(list);
  if (container.dataset.key === key) return;
  container.dataset.key = key;
  fill(container, list.map((board) => boardCard(board)));
}

function boardCard(board) {
  const memory = board.memoryBudget
    ? h(
        'div',
        { class: 'meter-row' },
        h('span', { class: 'small muted' }, 'Memory'),
        meter(board.memoryUsed, board.memoryBudget),
        h('span', { class: 'small' }, `${bytes(board.memoryUsed)} / ${bytes(board.memoryBudget)}`),
      )
    : null;
  const names = board.functions.map((f) => f.replace(/\.openfaas-fn$/, ''));
  return h(
    'article',
    { class: `card board board-${board.state}`, dataset: { board: board.name, state: board.state } },
    h(
      'div',
      { class: 'board-head' },
      h('h3', {}, board.name, board.thisBoard && !board.single ? h('span', { class: 'muted small' }, ' (this board)') : null),
      h('span', { class: `badge badge-${board.state === 'alive' ? 'ok' : board.state === 'dead' ? 'bad' : 'busy'}` }, board.single ? (board.state === 'alive' ? 'this board' : 'unhealthy') : board.state),
    ),
    h('p', { class: 'small muted' }, [board.arch, board.address].filter(Boolean).join(' · ') || '\u00a0'),
    memory,
    h('p', { class: 'small' }, names.length ? `Runs ${names.join(', ')}` : 'Runs nothing right now'),
  );
}

function meter(value, max) {
  const bar = h('span', { class: 'meter-bar' });
  const ratio = Math.max(0, Math.min(1, value / max));
  bar.style.setProperty('--fill', `${Math.round(ratio * 100)}%`);
  bar.classList.toggle('meter-high', ratio > 0.9);
  return h('span', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(max), 'aria-valuenow': String(value), 'aria-label': 'Memory used' }, bar);
}
