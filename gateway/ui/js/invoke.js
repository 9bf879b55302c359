// The invoke form of a function's page: method, path, headers and a text, JSON or binary
// body; shows the status, headers, duration and body of the answer. Requests go to
// /function/NAME.NS like any client's, without the page's cookie or CSRF token.

import { bytes, fill, h, ms, setText, statusKind } from './dom.js';

const METHODS = ['POST', 'GET', 'PUT', 'PATCH', 'DELETE'];
const MAX_SHOWN = 256 * 1024;

export function invokeForm(name, namespace) {
  const id = (s) => `invoke-${s}`;
  const method = h('select', { id: id('method') }, METHODS.map((m) => h('option', { value: m }, m)));
  const path = h('input', { id: id('path'), type: 'text', value: '/', spellcheck: 'false', autocomplete: 'off' });
  const headers = h('textarea', { id: id('headers'), rows: '2', spellcheck: 'false', placeholder: 'X-Name: value (one per line)' });
  const kind = h(
    'fieldset',
    { class: 'segmented' },
    h('legend', {}, 'Body'),
    ['text', 'json', 'file'].map((k) =>
      h(
        'label',
        {},
        h('input', { type: 'radio', name: 'invoke-kind', value: k, checked: k === 'text' }),
        { text: 'Text', json: 'JSON', file: 'Binary file' }[k],
      ),
    ),
  );
  const body = h('textarea', { id: id('body'), rows: '4', spellcheck: 'false', 'aria-label': 'Request body' });
  const file = h('input', { id: id('file'), type: 'file', hidden: true, 'aria-label': 'File to send as the body' });
  const error = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const button = h('button', { class: 'button button-primary', type: 'submit' }, 'Invoke');
  const result = h('div', { class: 'invoke-result', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'The answer shows here.'));

  kind.addEventListener('change', () => {
    const value = kind.querySelector('input:checked').value;
    body.hidden = value === 'file';
    file.hidden = value !== 'file';
    if (value === 'json' && !body.value.trim()) body.value = '{\n  \n}';
  });

  const form = h(
    'form',
    { class: 'invoke', on: { submit: (e) => { e.preventDefault(); send(); } } },
    h(
      'div',
      { class: 'invoke-line' },
      h('div', { class: 'field field-method' }, h('label', { for: id('method') }, 'Method'), method),
      h(
        'div',
        { class: 'field field-path' },
        h('label', { for: id('path') }, 'Path'),
        h('div', { class: 'prefixed' }, h('span', { class: 'prefix mono' }, `/function/${name}`), path),
      ),
    ),
    h('div', { class: 'field' }, h('label', { for: id('headers') }, 'Headers'), headers),
    kind,
    body,
    file,
    error,
    h('div', { class: 'actions' }, button),
  );

  async function send() {
    error.hidden = true;
    let init;
    try {
      init = request(method.value, headers.value, kind.querySelector('input:checked').value, body.value, file.files[0]);
    } catch (e) {
      error.hidden = false;
      setText(error, e.message);
      return;
    }
    let p = path.value.trim() || '/';
    if (!p.startsWith('/')) p = `/${p}`;
    button.disabled = true;
    setText(button, 'Invoking…');
    const started = performance.now();
    try {
      const response = await fetch(`/function/${encodeURIComponent(name)}.${encodeURIComponent(namespace)}${p}`, init);
      const buffer = await response.arrayBuffer();
      showAnswer(result, response, buffer, performance.now() - started);
    } catch (e) {
      fill(result, h('p', { class: 'text-bad' }, `No answer: ${e.message}`));
    } finally {
      button.disabled = false;
      setText(button, 'Invoke');
    }
  }

  return h('section', { class: 'card', 'aria-labelledby': 'invoke-title' }, h('h2', { id: 'invoke-title' }, 'Invoke'), form, result);
}

/** The fetch options; throws with a message for bad headers or JSON. */
function request(method, headerText, kind, text, file) {
  const headers = new Headers();
  headerText.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const colon = line.indexOf(':');
    if (colon < 1) throw new Error(`Header line ${i + 1} is not "Name: value".`);
    try {
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    } catch {
      throw new Error(`Header line ${i + 1}: "${line.slice(0, colon).trim()}" is not a valid header.`);
    }
  });
  // The session stays with the dashboard: never sent to a function.
  const init = { method, headers, credentials: 'omit', cache: 'no-store' };
  if (method === 'GET') return init;
  if (kind === 'json') {
    try {
      JSON.parse(text);
    } catch (e) {
      throw new Error(`The body is not JSON: ${e.message}`);
    }
    if (!headers.has('Content-Type')) headers.set('Content-Type', 'application/json');
    init.body = text;
  } else if (kind === 'file') {
    if (!file) throw new Error('Choose a file to send.');
    if (!headers.has('Content-Type')) headers.set('Content-Type', file.type || 'application/octet-stream');
    init.body = file;
  } else if (text) {
    if (!headers.has('Content-Type')) headers.set('Content-Type', 'text/plain; charset=utf-8');
    init.body = text;
  }
  return init;
}

function showAnswer(container, response, buffer, elapsed) {
  const type = response.headers.get('Content-Type') || '';
  const gateway = Number(response.headers.get('X-Duration-Seconds'));
  const timing = [`${ms(elapsed)} in the browser`];
  if (gateway) timing.push(`${ms(gateway * 1000)} at the gateway`);
  const headerRows = [];
  response.headers.forEach((value, key) => headerRows.push(h('dt', {}, key), h('dd', { class: 'mono small' }, value)));
  fill(
    container,
    h(
      'p',
      { class: 'answer-line' },
      h('span', { class: `status status-${statusKind(response.status)}`, dataset: { status: String(response.status) } }, `${response.status} ${response.statusText}`),
      ' ',
      h('span', { class: 'muted' }, `${timing.join(' · ')} · ${bytes(buffer.byteLength)}`),
    ),
    h('details', {}, h('summary', {}, `Headers (${headerRows.length / 2})`), h('dl', { class: 'kv' }, headerRows)),
    answerBody(buffer, type),
  );
}

function answerBody(buffer, type) {
  if (buffer.byteLength === 0) return h('p', { class: 'muted' }, 'Empty body.');
  if (type.startsWith('image/')) {
    return h('img', { class: 'answer-image', alt: 'The image the function answered', src: URL.createObjectURL(new Blob([buffer], { type })) });
  }
  const bytesShown = new Uint8Array(buffer, 0, Math.min(buffer.byteLength, MAX_SHOWN));
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytesShown);
  } catch {
    text = null;
  }
  if (text === null) {
    const hex = Array.from(bytesShown.slice(0, 512), (b) => b.toString(16).padStart(2, '0')).join(' ');
    return h('div', {}, h('p', { class: 'muted small' }, `Binary body, ${bytes(buffer.byteLength)}; the first bytes:`), h('pre', { class: 'answer-body mono' }, hex));
  }
  if (type.includes('json')) {
    try {
      text = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Shown as it came.
    }
  }
  const cut = buffer.byteLength > MAX_SHOWN ? `\n… (${bytes(buffer.byteLength - MAX_SHOWN)} more)` : '';
  return h('pre', { class: 'answer-body', tabindex: '0', 'aria-label': 'Answer body' }, text + cut);
}
