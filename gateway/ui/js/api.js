// The API the dashboard uses is faas-cli's (`/system/...`, `/function/...`), with the session
// cookie instead of Basic auth, and the session's CSRF token on every request that changes
// something. Live data comes from one event stream per page (`/ui/events`).

let csrfToken = null;
let user = null;

/** An API error: the status and the gateway's one-line message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  /** The field the message is about (`service`, `limits.memory`, `envVars.X`), if any. */
  get field() {
    const match = /^([A-Za-z][\w.[\]-]*): /.exec(this.message);
    return match ? match[1] : null;
  }
}

/** Sends the browser to the login form, back here afterwards. */
export function toLogin() {
  const next = `${location.pathname}${location.search}`;
  location.assign(`/ui/login?next=${encodeURIComponent(next)}`);
}

/** Loads the session (user, CSRF token); sends the browser to the login form without one. */
export async function loadSession() {
  const response = await fetch('/ui/session', { credentials: 'same-origin' });
  if (response.status === 401) {
    toLogin();
    return new Promise(() => {});
  }
  if (!response.ok) throw new ApiError(response.status, (await response.text()).trim());
  const session = await response.json();
  csrfToken = session.csrfToken;
  user = session.user;
  return session;
}

export function currentUser() {
  return user;
}

/** Headers every request of the page carries. */
export function baseHeaders(extra = {}) {
  const headers = new Headers(extra);
  if (csrfToken) headers.set('X-Bramble-CSRF', csrfToken);
  return headers;
}

/**
 * A request to the gateway. Resolves with the Response when it is 2xx; rejects with an
 * ApiError carrying the gateway's message otherwise (401: off to the login form).
 */
export async function request(method, path, { json, body, headers } = {}) {
  const init = { method, credentials: 'same-origin', headers: baseHeaders(headers) };
  if (json !== undefined) {
    init.headers.set('Content-Type', 'application/json');
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `bramble cannot be reached (${e.message})`);
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, 'your session has ended');
  }
  if (!response.ok) {
    const text = (await response.text()).trim();
    throw new ApiError(response.status, text || `${response.status} ${response.statusText}`);
  }
  return response;
}

export async function getJson(path) {
  return (await request('GET', path)).json();
}

export const api = {
  namespaces: () => getJson('/system/namespaces'),
  functions: (namespace) =>
    getJson(`/system/functions?namespace=${encodeURIComponent(namespace)}`),
  images: () => getJson('/system/images'),
  secrets: (namespace) => getJson(`/system/secrets?namespace=${encodeURIComponent(namespace)}`),
  deploy: (deployment) => request('POST', '/system/functions', { json: deployment }),
  scale: (name, namespace, replicas) =>
    request('POST', `/system/scale-function/${encodeURIComponent(name)}?namespace=${encodeURIComponent(namespace)}`, {
      json: { serviceName: name, namespace, replicas },
    }),
  remove: (name, namespace) =>
    request('DELETE', '/system/functions', { json: { functionName: name, namespace } }),
  removeImage: (name) => request('DELETE', '/system/images', { json: { name } }),
  setLine: (line, level) =>
    request('PUT', `/system/gpio/${encodeURIComponent(line)}`, { json: { level } }),
  logout: () => request('POST', '/ui/logout'),
};

/**
 * Uploads an image archive with progress (fetch cannot report upload progress; XHR can).
 * `onProgress(sentBytes, totalBytes)`. Resolves with the imported names.
 */
export function uploadImage(file, name, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    const query = name ? `?name=${encodeURIComponent(name)}` : '';
    xhr.open('POST', `/system/images${query}`);
    if (csrfToken) xhr.setRequestHeader('X-Bramble-CSRF', csrfToken);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.upload.addEventListener('progress', (e) => onProgress(e.loaded, e.total));
    xhr.addEventListener('load', () => {
      if (xhr.status === 401) {
        toLogin();
        reject(new ApiError(401, 'your session has ended'));
      } else if (xhr.status >= 200 && xhr.status < 300) {
        try {
          resolve(JSON.parse(xhr.responseText).images || []);
        } catch {
          resolve([]);
        }
      } else {
        reject(new ApiError(xhr.status, xhr.responseText.trim() || `${xhr.status}`));
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'the upload failed: bramble cannot be reached')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'the upload was cancelled')));
    xhr.send(file);
  });
}

// The connection indicator in the header: one stream per page, its state shown.

const listeners = new Set();
let connection = 'connecting';

/** Calls `listener(state)` now and on every change: connecting, live, reconnecting. */
export function onConnection(listener) {
  listeners.add(listener);
  listener(connection);
  return () => listeners.delete(listener);
}

function setConnection(state) {
  if (state === connection) return;
  connection = state;
  for (const listener of listeners) listener(state);
}

/**
 * Opens the page's event stream: `handlers` maps event names to functions of the parsed data.
 * The browser reconnects by itself; a stream the gateway refused (session ended) sends the
 * user to the login form. Returns a function that closes it.
 */
export function stream(query, handlers) {
  let source = null;
  let closed = false;
  let retry = null;
  const open = () => {
    setConnection(connection === 'live' ? 'reconnecting' : connection);
    source = new EventSource(`/ui/events${query}`);
    source.addEventListener('open', () => setConnection('live'));
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        handler(data);
      });
    }
    source.addEventListener('error', async () => {
      if (closed) return;
      if (source.readyState === EventSource.CONNECTING) {
        setConnection('reconnecting');
        return;
      }
      // Closed for good: a refusal (401 after the session ended, 4xx) or the server gone.
      setConnection('reconnecting');
      source.close();
      try {
        const check = await fetch('/ui/session', { credentials: 'same-origin' });
        if (check.status === 401) {
          toLogin();
          return;
        }
      } catch {
        // Unreachable: try again below.
      }
      if (!closed) retry = setTimeout(open, 2000);
    });
  };
  open();
  return () => {
    closed = true;
    clearTimeout(retry);
    if (source) source.close();
  };
}
