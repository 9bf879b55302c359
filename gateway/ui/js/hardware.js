// The board's hardware: GPIO lines with direction, level, bias and owners, updated as edges
// happen (on the simulator, inputs can be driven from here, like `bramble gpio set`); I2C,
// SPI and PWM grants; 1-Wire sensors with their values; recent trigger deliveries.

import { api, stream } from './api.js';
import { clock, fill, h, ms, setText, statusKind } from './dom.js';

const MAX_DELIVERIES = 50;

export function renderHardware(main) {
  const backend = h('p', { class: 'subtitle' }, '\u00a0');
  const lines = h('div', { class: 'lines', role: 'list', 'aria-label': 'GPIO lines' });
  const buses = h('tbody', {}, h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No I2C, SPI or PWM grants.')));
  const sensors = h('tbody', {}, h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'Reading…')));
  const deliveries = h('tbody', {}, h('tr', {}, h('td', { colspan: '7', class: 'muted' }, 'No trigger deliveries yet.')));
  const message = h('p', { class: 'form-message', role: 'status', 'aria-live': 'polite' });
  const unavailable = h('div', { class: 'alert', role: 'status', hidden: true });
  for (let i = 0; i < 8; i += 1) lines.append(h('div', { class: 'line skeleton', 'aria-hidden': 'true' }));

  const table = (id, title, heads, body) =>
    h(
      'section',
      { class: 'card', 'aria-labelledby': id },
      h('h2', { id }, title),
      h('div', { class: 'table-wrap' }, h('table', { class: 'table table-cards compact' }, h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))), body)),
    );

  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Hardware'), backend),
    unavailable,
    h('section', { class: 'card', 'aria-labelledby': 'lines-title' }, h('h2', { id: 'lines-title' }, 'GPIO lines'), message, lines),
    table('deliveries-title', 'Recent trigger deliveries', ['When', 'Function', 'Trigger', 'Event', 'Count', 'Result', 'Took'], deliveries),
    h('div', { class: 'columns' },
      table('buses-title', 'I2C, SPI and PWM', ['Kind', 'Device', 'Granted to'], buses),
      table('sensors-title', '1-Wire sensors', ['Sensor', 'Value', 'Granted to'], sensors)),
  );

  const cards = new Map();
  let simulated = false;

  const drive = async (name, level) => {
    message.className = 'form-message';
    try {
      await api.setLine(name, level);
      setText(message, `${name} driven ${level ? 'high' : 'low'}.`);
    } catch (e) {
      message.className = 'form-message text-bad';
      setText(message, e.message);
    }
  };

  const onHardware = (hw) => {
    simulated = hw.simulated;
    setText(backend, hw.simulated
      ? 'Simulated lines (no GPIO chip on this board): drive an input to test a function or a trigger.'
      : `GPIO character device (${hw.backend}): levels are read from the board.`);
    for (const el of lines.querySelectorAll('.skeleton')) el.remove();
    hw.lines.forEach((line, index) => {
      let card = cards.get(line.name);
      if (!card) {
        card = lineCard(line.name, drive);
        cards.set(line.name, card);
      }
      if (lines.children[index] !== card.el) lines.insertBefore(card.el, lines.children[index] || null);
      card.update(line, simulated);
    });
    fill(
      buses,
      hw.buses.length
        ? hw.buses.map((b) => h('tr', {}, h('td', { dataset: { label: 'Kind' } }, b.kind.toUpperCase()), h('td', { dataset: { label: 'Device' }, class: 'mono' }, b.device), h('td', { dataset: { label: 'Granted to' } }, b.owners.join(', '))))
        : h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No I2C, SPI or PWM grants.')),
    );
    fill(deliveries, hw.deliveries.length ? hw.deliveries.map(deliveryRow) : h('tr', {}, h('td', { colspan: '7', class: 'muted' }, 'No trigger deliveries yet.')));
  };

  const onEdge = (edge) => {
    const card = cards.get(edge.line);
    if (card) card.edge(edge);
  };

  const onDelivery = (d) => {
    if (deliveries.querySelector('td[colspan]')) deliveries.replaceChildren();
    deliveries.prepend(deliveryRow(d));
    while (deliveries.childElementCount > MAX_DELIVERIES) deliveries.lastElementChild.remove();
  };

  const onSensors = (list) => {
    fill(
      sensors,
      list.length
        ? list.map((s) =>
            h(
              'tr',
              {},
              h('td', { dataset: { label: 'Sensor' }, class: 'mono small' }, s.id),
              h('td', { dataset: { label: 'Value' }, class: s.error ? 'text-bad small' : 'num' }, s.error ? s.error : `${s.value.toFixed(2)} ${unit(s.unit)}`),
              h('td', { dataset: { label: 'Granted to' } }, s.owners.join(', ') || h('span', { class: 'muted' }, 'nobody')),
            ),
          )
        : h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No 1-Wire sensors on this board.')),
    );
  };

  return stream('?view=hardware', {
    hardware: onHardware,
    edge: onEdge,
    delivery: onDelivery,
    sensors: onSensors,
    unavailable: (u) => {
      unavailable.hidden = false;
      setText(unavailable, u.message);
    },
  });
}

function unit(u) {
  return u === 'celsius' ? '°C' : u || '';
}

function deliveryRow(d) {
  const result = d.outcome === 'retrying' ? `${d.status || '—'} retrying` : String(d.status);
  return h(
    'tr',
    { dataset: { function: d.function } },
    h('td', { dataset: { label: 'When' }, class: 'small' }, clock(d.atMs)),
    h('td', { dataset: { label: 'Function' } }, h('a', { href: `/ui/functions/${encodeURIComponent(d.function)}` }, d.function.replace(/\.openfaas-fn$/, ''))),
    h('td', { dataset: { label: 'Trigger' } }, d.kind),
    h('td', { dataset: { label: 'Event' }, class: 'mono small' }, d.source),
    h('td', { dataset: { label: 'Count' }, class: 'num' }, String(d.count)),
    h('td', { dataset: { label: 'Result' } }, h('span', { class: `status status-${d.outcome === 'delivered' ? 'ok' : statusKind(d.status)}` }, result)),
    h('td', { dataset: { label: 'Took' }, class: 'num' }, ms(d.ms)),
  );
}

/** A line's card: name, level lamp, direction, bias, owners and (simulator) a drive switch. */
function lineCard(name, drive) {
  const lamp = h('span', { class: 'lamp', 'aria-hidden': 'true' });
  const level = h('span', { class: 'level' });
  const details = h('span', { class: 'line-details small muted' });
  const owners = h('span', { class: 'line-owners small' });
  const edges = h('span', { class: 'line-edges small muted' });
  const button = h('button', { class: 'button button-small', type: 'button', hidden: true });
  const el = h(
    'div',
    { class: 'line', role: 'listitem', dataset: { line: name } },
    h('div', { class: 'line-head' }, lamp, h('span', { class: 'line-name mono' }, name), level),
    details,
    owners,
    h('div', { class: 'line-foot' }, edges, button),
  );
  let current = null;
  let seen = 0;
  const show = (value) => {
    current = value;
    el.dataset.level = value === null || value === undefined ? '' : String(value);
    setText(level, value === null || value === undefined ? '—' : value ? 'high' : 'low');
    setText(button, value ? 'Drive low' : 'Drive high');
    button.setAttribute('aria-label', `Drive ${name} ${value ? 'low' : 'high'}`);
  };
  button.addEventListener('click', () => drive(name, current ? 0 : 1));
  return {
    el,
    update(line, simulated) {
      show(line.level);
      el.dataset.direction = line.direction || 'unused';
      setText(details, [line.direction === 'in' ? 'input' : line.direction === 'out' ? 'output' : 'not requested', line.bias, line.debounce && `debounce ${line.debounce}`].filter(Boolean).join(' · '));
      setText(owners, line.owners.length ? line.owners.map((o) => o.replace(/\.openfaas-fn$/, '')).join(', ') : '\u00a0');
      // Outputs belong to their function; inputs and free lines can be driven on the simulator.
      button.hidden = !simulated || line.direction === 'out';
    },
    edge(edge) {
      show(edge.level);
      seen += edge.count;
      setText(edges, `${seen} edge${seen === 1 ? '' : 's'} seen`);
      el.classList.remove('flash');
      // Restart the animation (a reflow in between).
      void el.offsetWidth;
      el.classList.add('flash');
    },
  };
}
