// A function's page: status and last exit reason, replicas and where they run, recent
// invocations, a live log tail, the invoke form, scale and delete, its hardware grants and
// triggers with their last events, and its configuration (secret names only, never values).

import { api, stream } from './api.js';
import {
  ago, bytes, clock, confirmDialog, count, cpu, fill, h, ms, p50, percent, setText, stateBadge, statusKind,
} from './dom.js';
import { invokeForm } from './invoke.js';

const MAX_LOG_LINES = 500;

export function renderFunction(main, [target], { navigate }) {
  const dot = target.lastIndexOf('.');
  const name = dot > 0 ? target.slice(0, dot) : target;
  const namespace = dot > 0 ? target.slice(dot + 1) : 'openfaas-fn';

  const badge = h('span', { class: 'state-slot' }, h('span', { class: 'badge badge-idle' }, '…'));
  const image = h('p', { class: 'subtitle' }, '\u00a0');
  const reason = h('div', { class: 'alert alert-bad', role: 'status', hidden: true });
  const gone = h('div', { class: 'alert', role: 'alert', hidden: true });
  const figures = {};
  const figure = (key, label) => {
    const value = h('dd', {}, '—');
    figures[key] = value;
    return h('div', { class: 'figure' }, h('dt', {}, label), value);
  };
  const replicas = h('tbody');
  const invocations = h('tbody');
  const logs = h('ol', { class: 'logs', 'aria-label': 'Log lines', tabindex: '0' });
  const hardware = h('div', { class: 'hardware-of' }, h('p', { class: 'muted' }, 'No hardware grants or triggers.'));
  const config = h('div', { class: 'config' });
  const scale = scaleForm(name, namespace);

  fill(
    main,
    h(
      'div',
      { class: 'page-head' },
      h('p', { class: 'crumbs' }, h('a', { href: '/ui/' }, 'Overview'), ' / '),
      h('div', { class: 'title-row' }, h('h1', {}, name, namespace !== 'openfaas-fn' ? h('span', { class: 'muted' }, `.${namespace}`) : null), badge),
      image,
    ),
    gone,
    reason,
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'status-title' },
      h('h2', { id: 'status-title' }, 'Status'),
      h(
        'dl',
        { class: 'figures' },
        figure('replicas', 'Replicas ready'),
        figure('invocations', 'Invocations'),
        figure('errors', 'Error rate'),
        figure('p50', 'p50'),
        figure('memory', 'Memory'),
        figure('cpu', 'CPU'),
        figure('restarts', 'Restarts'),
        figure('lastExit', 'Last exit'),
      ),
      h('h3', {}, 'Replicas'),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table table-cards replicas' },
          h('thead', {}, h('tr', {}, ['Replica', 'State', 'Board', 'Address', 'Failures'].map((t) => h('th', { scope: 'col' }, t)))),
          replicas,
        ),
      ),
    ),
    h('div', { class: 'columns' }, invokeForm(name, namespace), scale.el),
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'invocations-title' },
      h('h2', { id: 'invocations-title' }, 'Recent invocations'),
      h(
        'div',
        { class: 'table-wrap recent' },
        h(
          'table',
          { class: 'table compact' },
          h('thead', {}, h('tr', {}, ['When', 'Status', 'Duration'].map((t) => h('th', { scope: 'col' }, t)))),
          invocations,
        ),
      ),
    ),
    h('section', { class: 'card', 'aria-labelledby': 'logs-title' }, h('h2', { id: 'logs-title' }, 'Logs'), logs),
    h('section', { class: 'card', 'aria-labelledby': 'hardware-title' }, h('h2', { id: 'hardware-title' }, 'Hardware and triggers'), hardware),
    h('section', { class: 'card', 'aria-labelledby': 'config-title' }, h('h2', { id: 'config-title' }, 'Configuration'), config),
    deleteSection(name, namespace, navigate),
  );

  let lastState = null;
  let lastConfig = null;
  const onFunction = ({ status, summary, replicas: list }) => {
    if (summary.state !== lastState) {
      fill(badge, stateBadge(summary.state));
      lastState = summary.state;
    }
    setText(image, `${summary.image}${status.createdAt ? ` · deployed ${ago(Date.parse(status.createdAt))}` : ''}`);
    const why = [summary.lastExit && `Last exit: ${summary.lastExit}.`, summary.message].filter(Boolean).join(' ');
    const troubled = summary.state === 'crash-looping' || (summary.state === 'starting' && summary.restarts > 0);
    reason.hidden = !troubled || !why;
    setText(reason, why ? `${summary.state === 'crash-looping' ? 'Crash-looping. ' : ''}${why}` : '');
    setText(figures.replicas, `${summary.available} / ${summary.replicas}`);
    setText(figures.invocations, count(summary.invocations));
    setText(figures.errors, percent(summary.errors, summary.invocations));
    setText(figures.p50, p50(summary.p50Ms));
    setText(figures.memory, summary.memoryBytes === undefined ? '—' : bytes(summary.memoryBytes));
    setText(figures.cpu, cpu(summary.cpuMillis));
    setText(figures.restarts, count(summary.restarts));
    setText(figures.lastExit, summary.lastExit || '—');
    scale.show(summary.replicas);
    fill(
      replicas,
      list.length
        ? list.map((r) =>
            h(
              'tr',
              {},
              h('td', { dataset: { label: 'Replica' }, class: 'mono small' }, r.id),
              h('td', { dataset: { label: 'State' } }, h('span', { class: `badge badge-${replicaKind(r.state)}` }, r.state)),
              h('td', { dataset: { label: 'Board' } }, r.board || 'this board'),
              h('td', { dataset: { label: 'Address' }, class: 'mono small' }, r.address || '—'),
              h('td', { dataset: { label: 'Failures' } }, String(r.failures || 0)),
            ),
          )
        : h('tr', {}, h('td', { colspan: '5', class: 'muted' }, summary.replicas === 0 ? 'Scaled to zero: the next request starts a replica.' : 'No replica yet.')),
    );
    const configKey = JSON.stringify([status.envVars, status.labels, status.annotations, status.limits, status.requests, status.secrets, status.readOnlyRootFilesystem]);
    if (configKey !== lastConfig) {
      lastConfig = configKey;
      renderConfig(config, status);
    }
  };
  const onInvocations = ({ recent }) => {
    fill(
      invocations,
      recent.length
        ? recent.map((i) =>
            h(
              'tr',
              {},
              h('td', { class: 'small' }, clock(i.atMs)),
              h('td', {}, h('span', { class: `status status-${statusKind(i.status)}` }, String(i.status))),
              h('td', { class: 'num' }, ms(i.micros / 1000)),
            ),
          )
        : h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No invocations yet.')),
    );
  };
  const onLogs = ({ lines }) => {
    const stick = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 8;
    for (const line of lines) {
      logs.append(
        h('li', {}, h('time', { class: 'muted', datetime: line.timestamp }, line.timestamp.slice(11, 23)), ' ', h('span', {}, line.text)),
      );
    }
    while (logs.childElementCount > MAX_LOG_LINES) logs.firstElementChild.remove();
    if (stick) logs.scrollTop = logs.scrollHeight;
  };
  const onGone = () => {
    gone.hidden = false;
    fill(gone, `${name} was deleted. `, h('a', { href: '/ui/' }, 'Back to the overview'));
  };
  return stream(`?function=${encodeURIComponent(`${name}.${namespace}`)}`, {
    function: onFunction,
    invocations: onInvocations,
    logs: onLogs,
    hardware: (hw) => renderHardware(hardware, hw),
    gone: onGone,
  });
}

function replicaKind(state) {
  return { ready: 'ok', starting: 'busy', restarting: 'bad', stopping: 'busy', stopped: 'idle' }[state] || 'idle';
}

function scaleForm(name, namespace) {
  const input = h('input', { id: 'scale-replicas', type: 'number', min: '0', max: '8', step: '1', inputmode: 'numeric', required: true });
  const message = h('p', { class: 'form-message', role: 'status', 'aria-live': 'polite' });
  let known = null;
  const submit = async (replicas) => {
    message.className = 'form-message';
    setText(message, `Scaling to ${replicas}…`);
    try {
      await api.scale(name, namespace, replicas);
      setText(message, replicas === 0 ? 'Scaled to zero: the next request starts it again.' : `Scaled to ${replicas}.`);
    } catch (e) {
      message.className = 'form-message text-bad';
      setText(message, e.message);
    }
  };
  const form = h(
    'form',
    {
      class: 'inline-form',
      on: {
        submit: (e) => {
          e.preventDefault();
          submit(Number(input.value));
        },
      },
    },
    h('label', { for: 'scale-replicas' }, 'Replicas'),
    input,
    h('button', { class: 'button button-primary', type: 'submit' }, 'Scale'),
    h('button', { class: 'button', type: 'button', on: { click: () => submit(0) } }, 'Scale to zero'),
  );
  return {
    el: h('section', { class: 'card', 'aria-labelledby': 'scale-title' }, h('h2', { id: 'scale-title' }, 'Scale'), form, message),
    show(replicas) {
      // The field follows the function until the user edits it.
      if (document.activeElement !== input && (known === null || Number(input.value) === known)) input.value = String(replicas);
      known = replicas;
    },
  };
}

function deleteSection(name, namespace, navigate) {
  const message = h('p', { class: 'form-message', role: 'status' });
  const button = h(
    'button',
    {
      class: 'button button-danger',
      type: 'button',
      on: {
        click: async () => {
          const ok = await confirmDialog({
            title: `Delete ${name}?`,
            text: `Its replicas are stopped and removed, with its hardware grants and triggers. Its image stays on the board.`,
            confirm: `Delete ${name}`,
            danger: true,
          });
          if (!ok) return;
          button.disabled = true;
          try {
            await api.remove(name, namespace);
            navigate('/ui/');
          } catch (e) {
            button.disabled = false;
            message.className = 'form-message text-bad';
            setText(message, e.message);
          }
        },
      },
    },
    `Delete ${name}`,
  );
  return h('section', { class: 'card danger-zone', 'aria-labelledby': 'delete-title' }, h('h2', { id: 'delete-title' }, 'Delete'), button, message);
}

function renderHardware(container, { grants, triggers }) {
  const kinds = Object.entries(grants || {});
  if (!kinds.length && !(triggers || []).length) {
    fill(container, h('p', { class: 'muted' }, 'No hardware grants or triggers.'));
    return;
  }
  fill(
    container,
    kinds.length
      ? h('dl', { class: 'kv' }, kinds.map(([kind, items]) => [h('dt', {}, kind.toUpperCase()), h('dd', { class: 'mono small' }, items.join(', '))]))
      : null,
    (triggers || []).length
      ? h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { class: 'table table-cards' },
            h('thead', {}, h('tr', {}, ['Trigger', 'Fires on', 'Path', 'Last event'].map((t) => h('th', { scope: 'col' }, t)))),
            h(
              'tbody',
              {},
              triggers.map((t) =>
                h(
                  'tr',
                  {},
                  h('td', { dataset: { label: 'Trigger' } }, t.kind),
                  h('td', { dataset: { label: 'Fires on' }, class: 'mono small' }, t.source),
                  h('td', { dataset: { label: 'Path' }, class: 'mono small' }, t.path),
                  h(
                    'td',
                    { dataset: { label: 'Last event' } },
                    t.last
                      ? [
                          h('span', { class: `status status-${statusKind(t.last.status)}` }, String(t.last.status || t.last.outcome)),
                          ` ${t.last.source}${t.last.count > 1 ? ` ×${t.last.count}` : ''} · ${clock(t.last.atMs)}`,
                        ]
                      : h('span', { class: 'muted' }, 'none yet'),
                  ),
                ),
              ),
            ),
          ),
        )
      : null,
  );
}

function renderConfig(container, status) {
  const rows = [];
  const add = (label, value) => rows.push(h('dt', {}, label), h('dd', {}, value));
  const map = (object) => {
    const entries = Object.entries(object || {});
    return entries.length ? h('ul', { class: 'plain mono small' }, entries.map(([k, v]) => h('li', {}, `${k}=${v}`))) : h('span', { class: 'muted' }, 'none');
  };
  add('Environment', map(status.envVars));
  add('Labels', map(status.labels));
  add('Annotations', map(status.annotations));
  const limits = [status.limits?.memory && `memory ${status.limits.memory}`, status.limits?.cpu && `cpu ${status.limits.cpu}`].filter(Boolean);
  add('Limits', limits.length ? limits.join(', ') : h('span', { class: 'muted' }, 'the node’s defaults'));
  // Names only: the API never gives secret values out.
  add('Secrets', (status.secrets || []).length ? status.secrets.join(', ') : h('span', { class: 'muted' }, 'none'));
  add('Root filesystem', status.readOnlyRootFilesystem ? 'read-only' : 'writable');
  fill(container, h('dl', { class: 'kv' }, rows));
}
