// The board's images: list (with the functions using each), import an archive by upload with
// progress, remove one no function uses.

import { api, uploadImage } from './api.js';
import { bytes, confirmDialog, fill, h, setText } from './dom.js';

export function renderImages(main) {
  const tbody = h('tbody', {}, h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'Loading…')));
  const message = h('p', { class: 'form-message', role: 'status', 'aria-live': 'polite' });
  const file = h('input', { id: 'import-file', type: 'file', accept: '.tar,.tar.gz,.tgz,application/x-tar,application/gzip', required: true });
  const rename = h('input', { id: 'import-name', type: 'text', spellcheck: 'false', placeholder: 'optional: hello:latest' });
  const progress = h('progress', { id: 'import-progress', max: '1', value: '0', hidden: true, 'aria-label': 'Upload progress' });
  const progressText = h('span', { class: 'small muted', 'aria-live': 'polite' });
  const upload = h('button', { class: 'button button-primary', type: 'submit' }, 'Import');

  const form = h(
    'form',
    { class: 'card form', on: { submit: (e) => { e.preventDefault(); importArchive(); } } },
    h('h2', {}, 'Import an image archive'),
    h('p', { class: 'hint' }, 'An OCI layout or docker save archive, gzipped or not (bramble image build makes one). No registry needed.'),
    h('div', { class: 'row' },
      h('div', { class: 'field' }, h('label', { for: 'import-file' }, 'Archive'), file),
      h('div', { class: 'field' }, h('label', { for: 'import-name' }, 'Name (single-image archives)'), rename)),
    h('div', { class: 'actions' }, upload, progress, progressText),
    message,
  );

  fill(
    main,
    h('div', { class: 'page-head' }, h('h1', {}, 'Images')),
    h(
      'section',
      { class: 'card', 'aria-labelledby': 'images-title' },
      h('h2', { id: 'images-title' }, 'On this board'),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table table-cards images' },
          h('thead', {}, h('tr', {}, ['Image', 'Digest', 'Size', 'Used by', ''].map((t, i) => h('th', { scope: 'col', 'aria-label': i === 4 ? 'Actions' : null }, t)))),
          tbody,
        ),
      ),
    ),
    form,
  );

  async function load() {
    try {
      const [images, functions] = await Promise.all([api.images(), allFunctions()]);
      fill(
        tbody,
        images.length
          ? images.map((image) => {
              const users = functions.filter((f) => sameImage(f.image, image.name)).map((f) => f.name);
              return h(
                'tr',
                {},
                h('td', { dataset: { label: 'Image' }, class: 'mono' }, image.name),
                h('td', { dataset: { label: 'Digest' }, class: 'mono small', title: image.digest }, image.digest.replace(/^sha256:/, '').slice(0, 12)),
                h('td', { dataset: { label: 'Size' }, class: 'num' }, bytes(image.size)),
                h('td', { dataset: { label: 'Used by' } }, users.length ? users.join(', ') : h('span', { class: 'muted' }, 'nothing')),
                h(
                  'td',
                  { class: 'row-actions' },
                  h(
                    'button',
                    {
                      class: 'button button-small',
                      type: 'button',
                      disabled: users.length > 0,
                      title: users.length ? 'In use: delete the functions first' : null,
                      'aria-label': `Remove ${image.name}`,
                      on: { click: () => remove(image.name) },
                    },
                    'Remove',
                  ),
                ),
              );
            })
          : h('tr', {}, h('td', { colspan: '5', class: 'muted' }, 'No images yet: import one below.')),
      );
    } catch (e) {
      fill(tbody, h('tr', {}, h('td', { colspan: '5', class: 'text-bad' }, e.message)));
    }
  }

  async function remove(name) {
    const ok = await confirmDialog({ title: `Remove ${name}?`, text: 'Its layers are deleted from this board when no other image shares them.', confirm: 'Remove', danger: true });
    if (!ok) return;
    try {
      await api.removeImage(name);
      message.className = 'form-message';
      setText(message, `${name} removed.`);
    } catch (e) {
      message.className = 'form-message text-bad';
      setText(message, e.message);
    }
    load();
  }

  async function importArchive() {
    const chosen = file.files[0];
    if (!chosen) {
      message.className = 'form-message text-bad';
      setText(message, 'Choose an archive first.');
      file.focus();
      return;
    }
    upload.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    message.className = 'form-message';
    setText(message, '');
    try {
      const names = await uploadImage(chosen, rename.value.trim(), (sent, total) => {
        progress.value = total ? sent / total : 0;
        setText(progressText, sent < total ? `${bytes(sent)} of ${bytes(total)}` : 'Unpacking…');
      });
      setText(message, `Imported ${names.join(', ') || 'the archive'}.`);
      form.reset();
    } catch (e) {
      message.className = 'form-message text-bad';
      setText(message, e.message);
    } finally {
      upload.disabled = false;
      progress.hidden = true;
      setText(progressText, '');
      load();
    }
  }

  load();
  return null;
}

async function allFunctions() {
  const namespaces = await api.namespaces();
  const lists = await Promise.all(namespaces.map((n) => api.functions(n)));
  return lists.flat();
}

/** `hello:latest` and `docker.io/library/hello:latest` are the same image. */
function sameImage(a, b) {
  const normal = (ref) => {
    const last = ref.split('/').pop();
    let r = last.includes(':') || ref.includes('@') ? ref : `${ref}:latest`;
    if (!r.split('/')[0].includes('.') && !r.split('/')[0].includes(':')) {
      r = r.includes('/') ? `docker.io/${r}` : `docker.io/library/${r}`;
    }
    return r;
  };
  return normal(a) === normal(b);
}
