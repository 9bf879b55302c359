// Deploy from a form: image (one of the board's or typed), name, namespace, environment,
// labels and annotations, limits, secrets. The API's errors are shown next to the field they
// name; a deployed function's page opens, where it is seen becoming ready.

import { ApiError, api } from './api.js';
import { bytes, fill, h, setText } from './dom.js';

export function renderDeploy(main, _params, { navigate }) {
  const fields = {};
  const errors = {};
  const field = (key, label, control, hint) => {
    control.id = `deploy-${key}`;
    fields[key] = control;
    const error = h('p', { class: 'field-error', id: `deploy-${key}-error`, role: 'alert', hidden: true });
    errors[key] = error;
    control.setAttribute('aria-describedby', `deploy-${key}-error${hint ? ` deploy-${key}-hint` : ''}`);
    return h(
      'div',
      { class: 'field' },
      h('label', { for: control.id }, label),
      control,
      hint ? h('p', { class: 'hint', id: `deploy-${key}-hint` }, hint) : null,
      error,
    );
  };
  const images = h('datalist', { id: 'deploy-images' });
  const secrets = h('div', { class: 'checks', id: 'deploy-secrets', role: 'group', 'aria-labelledby': 'deploy-secrets-label' });
  const general = h('div', { class: 'alert alert-bad', role: 'alert', tabindex: '-1', hidden: true });
  const submit = h('button', { class: 'button button-primary', type: 'submit' }, 'Deploy');

  const form = h(
    'form',
    { class: 'card form', novalidate: true, on: { submit: (e) => { e.preventDefault(); deploy(); } } },
    general,
    field('image', 'Image', h('input', { type: 'text', list: 'deploy-images', required: true, spellcheck: 'false', autocomplete: 'off', placeholder: 'hello:latest' }), 'One of this board’s images (they are suggested as you type), or a reference to pull.'),
    images,
    h(
      'div',
      { class: 'row' },
      field('service', 'Name', h('input', { type: 'text', required: true, spellcheck: 'false', autocomplete: 'off', pattern: '[a-z0-9]([-a-z0-9]*[a-z0-9])?', placeholder: 'hello' }), 'Lower case letters, digits and dashes.'),
      field('namespace', 'Namespace', h('select', {}, h('option', { value: 'openfaas-fn' }, 'openfaas-fn'))),
    ),
    field('envVars', 'Environment', h('textarea', { rows: '3', spellcheck: 'false', placeholder: 'MESSAGE=Hi' }), 'KEY=value, one per line.'),
    h(
      'div',
      { class: 'row' },
      field('labels', 'Labels', h('textarea', { rows: '3', spellcheck: 'false', placeholder: 'com.openfaas.scale.zero=true' }), 'key=value, one per line.'),
      field('annotations', 'Annotations', h('textarea', { rows: '3', spellcheck: 'false', placeholder: 'bramble.gpio=GPIO17:in:pull-up' }), 'key=value, one per line: hardware grants, triggers, schedules.'),
    ),
    h(
      'div',
      { class: 'row' },
      field('limits.memory', 'Memory limit', h('input', { type: 'text', spellcheck: 'false', placeholder: '128Mi' }), 'Empty: the board’s default.'),
      field('limits.cpu', 'CPU limit', h('input', { type: 'text', spellcheck: 'false', placeholder: '500m' }), 'Empty: no limit (or the board’s default).'),
    ),
    h('div', { class: 'field' }, h('span', { class: 'label', id: 'deploy-secrets-label' }, 'Secrets'), secrets, h('p', { class: 'field-error', id: 'deploy-secrets-error', role: 'alert', hidden: true })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', id: 'deploy-readonly' }), 'Read-only root filesystem (a writable /tmp)'),
    h('div', { class: 'actions' }, submit),
  );
  errors.secrets = form.querySelector('#deploy-secrets-error');

  fill(main, h('div', { class: 'page-head' }, h('h1', {}, 'Deploy a function')), form);

  // What the board has, for the suggestions.
  api.images().then((list) => {
    fill(images, list.map((i) => h('option', { value: i.name }, `${i.name} (${bytes(i.size)})`)));
  }).catch(() => {});
  api.namespaces().then((list) => {
    fill(fields.namespace, list.map((n) => h('option', { value: n, selected: n === 'openfaas-fn' }, n)));
    loadSecrets();
  }).catch(() => {});
  fields.namespace.addEventListener('change', loadSecrets);

  function loadSecrets() {
    api.secrets(fields.namespace.value).then((list) => {
      fill(
        secrets,
        list.length
          ? list.map((s) => h('label', { class: 'check' }, h('input', { type: 'checkbox', value: s.name, name: 'secret' }), s.name))
          : h('span', { class: 'muted small' }, 'No secrets in this namespace (create them with faas-cli secret create or bramble secret create).'),
      );
    }).catch(() => {});
  }

  function clearErrors() {
    general.hidden = true;
    for (const [key, el] of Object.entries(errors)) {
      el.hidden = true;
      fields[key]?.removeAttribute('aria-invalid');
    }
  }

  function showError(key, message) {
    const el = errors[key];
    if (!el) {
      general.hidden = false;
      setText(general, message);
      general.focus();
      return;
    }
    el.hidden = false;
    setText(el, message);
    if (fields[key]) {
      fields[key].setAttribute('aria-invalid', 'true');
      fields[key].focus();
    }
  }

  async function deploy() {
    clearErrors();
    let deployment;
    try {
      deployment = read();
    } catch (e) {
      showError(e.field, e.message);
      return;
    }
    submit.disabled = true;
    setText(submit, 'Deploying…');
    try {
      await api.deploy(deployment);
      navigate(`/ui/functions/${encodeURIComponent(`${deployment.service}.${deployment.namespace}`)}`);
    } catch (e) {
      const key = e instanceof ApiError ? fieldOf(e) : null;
      showError(key, e.message);
    } finally {
      submit.disabled = false;
      setText(submit, 'Deploy');
    }
  }

  function read() {
    const value = (key) => fields[key].value.trim();
    const deployment = {
      service: value('service'),
      image: value('image'),
      namespace: fields.namespace.value,
      envVars: pairs('envVars', fields.envVars.value),
      labels: pairs('labels', fields.labels.value),
      annotations: pairs('annotations', fields.annotations.value),
      secrets: Array.from(secrets.querySelectorAll('input:checked'), (c) => c.value),
      readOnlyRootFilesystem: form.querySelector('#deploy-readonly').checked,
    };
    if (!deployment.image) throw Object.assign(new Error('An image is required.'), { field: 'image' });
    if (!deployment.service) throw Object.assign(new Error('A name is required.'), { field: 'service' });
    const limits = {};
    if (value('limits.memory')) limits.memory = value('limits.memory');
    if (value('limits.cpu')) limits.cpu = value('limits.cpu');
    if (Object.keys(limits).length) deployment.limits = limits;
    return deployment;
  }
}

/** `KEY=value` lines as an object; throws naming the field and the line. */
function pairs(field, text) {
  const out = {};
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const eq = line.indexOf('=');
    if (eq < 1) {
      throw Object.assign(new Error(`Line ${i + 1} is not key=value.`), { field });
    }
    out[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return out;
}

/** Which form field an API error is about: `service: …`, `limits.memory: …`, `envVars.X: …`. */
function fieldOf(error) {
  const field = error.field;
  if (error.status === 409 && /already exists/.test(error.message)) return 'service';
  if (!field) return /annotation/.test(error.message) ? 'annotations' : null;
  if (field.startsWith('envVars')) return 'envVars';
  if (field.startsWith('secrets')) return 'secrets';
  if (field.startsWith('labels')) return 'labels';
  if (field.startsWith('annotation')) return 'annotations';
  if (field === 'name') return 'service';
  return ['service', 'image', 'namespace', 'limits.memory', 'limits.cpu'].includes(field) ? field : null;
}
