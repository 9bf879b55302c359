// The dashboard's entry: the session, the header (navigation, connection, theme, logout) and
// a router over the pages. Every page is a function `render(main, params)` that fills `main`
// and returns a function that stops it (closes its event stream).

import { api, loadSession, onConnection } from './api.js';
import { fill, h, setText } from './dom.js';
import { renderOverview } from './overview.js';
import { renderFunction } from './function.js';
import { renderDeploy } from './deploy.js';
import { renderImages } from './images.js';
import { renderHardware } from './hardware.js';

const routes = [
  { pattern: /^\/ui\/?$/, render: renderOverview, nav: 'overview', title: 'Overview' },
  { pattern: /^\/ui\/functions\/([^/]+)\/?$/, render: renderFunction, nav: 'overview', title: 'Function' },
  { pattern: /^\/ui\/deploy\/?$/, render: renderDeploy, nav: 'deploy', title: 'Deploy' },
  { pattern: /^\/ui\/images\/?$/, render: renderImages, nav: 'images', title: 'Images' },
  { pattern: /^\/ui\/hardware\/?$/, render: renderHardware, nav: 'hardware', title: 'Hardware' },
];

let stop = null;

/** Shows the page of the current URL. */
function route() {
  if (stop) stop();
  stop = null;
  const main = document.getElementById('main');
  const path = location.pathname;
  const found = routes.find((r) => r.pattern.test(path));
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (found && link.dataset.nav === found.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (!found) {
    document.title = 'Not found · bramble';
    fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '/ui/' }, 'Back to the overview')));
    return;
  }
  const params = path.match(found.pattern).slice(1).map(decodeURIComponent);
  document.title = `${found.title} · bramble`;
  main.replaceChildren();
  stop = found.render(main, params, { navigate }) || null;
}

/** Goes to a page of the dashboard without reloading. */
export function navigate(path) {
  history.pushState(null, '', path);
  route();
  document.getElementById('main').focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

function interceptLinks() {
  document.addEventListener('click', (event) => {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const link = event.target.closest('a[href]');
    if (!link || link.target || link.hasAttribute('download')) return;
    const url = new URL(link.href);
    if (url.origin !== location.origin || !url.pathname.startsWith('/ui/')) return;
    if (url.pathname.startsWith('/ui/assets/')) return;
    event.preventDefault();
    navigate(url.pathname + url.search);
  });
  window.addEventListener('popstate', route);
}

function showConnection() {
  const el = document.getElementById('connection');
  const words = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…' };
  onConnection((state) => {
    el.dataset.state = state;
    setText(el.querySelector('.connection-text'), words[state] || state);
    el.title =
      state === 'reconnecting'
        ? 'The connection to bramble was lost; the page reconnects by itself.'
        : '';
  });
}

const THEMES = ['auto', 'light', 'dark'];

function setupTheme() {
  const button = document.getElementById('theme');
  const show = () => {
    const theme = localStorage.getItem('bramble-theme') || 'auto';
    setText(button.querySelector('.theme-text'), theme === 'auto' ? 'Auto' : theme === 'dark' ? 'Dark' : 'Light');
    button.setAttribute('aria-label', `Colour theme: ${theme}. Change it`);
    if (theme === 'auto') delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
  };
  button.addEventListener('click', () => {
    const current = localStorage.getItem('bramble-theme') || 'auto';
    const next = THEMES[(THEMES.indexOf(current) + 1) % THEMES.length];
    localStorage.setItem('bramble-theme', next);
    show();
  });
  show();
}

function setupLogout(session) {
  const button = document.getElementById('logout');
  button.hidden = !session.csrfToken;
  setText(document.getElementById('user'), session.user || '');
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await api.logout();
    } finally {
      location.assign('/ui/login');
    }
  });
}

async function start() {
  setupTheme();
  showConnection();
  interceptLinks();
  const session = await loadSession();
  setupLogout(session);
  route();
}

start().catch((e) => {
  const main = document.getElementById('main');
  fill(main, h('div', { class: 'alert', role: 'alert' }, `The dashboard could not start: ${e.message}`));
});
