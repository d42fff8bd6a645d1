// The hub's migrate service, as this JupyterLab page reaches it.
//
// During a move the user server is frozen (its requests wait at the hub's hold server), so
// the widget asks the hub's service instead, with the token JupyterHub puts in the page
// (PageConfig.token: the OAuth token of this server's client, which MigratingSpawner gives
// `access:services!service=migrate` and `servers` on this server).

import { PageConfig, URLExt } from '@jupyterlab/coreutils';

const SERVICE = 'migrate';

/** Where the hub serves its services, e.g. /services/migrate/ (or https://hub/...). */
export function servicePage() {
  // hubPrefix is the hub's base URL + "hub/"; services sit beside it
  const hubPrefix = PageConfig.getOption('hubPrefix') || '/hub/';
  const base = hubPrefix.replace(/hub\/?$/, '');
  const host = PageConfig.getOption('hubHost') || '';
  return host + URLExt.join(base, 'services', SERVICE) + '/';
}

/** The path of this server in the API: servers/USER[/SERVER]. */
function serverPath() {
  const user = PageConfig.getOption('hubServerUser') || PageConfig.getOption('hubUser');
  const name = PageConfig.getOption('hubServerName') || '';
  const parts = ['servers', encodeURIComponent(user)];
  if (name) {
    parts.push(encodeURIComponent(name));
  }
  return parts.join('/');
}

export class ServiceError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class MigrateService {
  constructor() {
    this.root = URLExt.join(servicePage(), 'api', serverPath());
    this.token = PageConfig.getToken();
  }

  /** A user server is in the page config only when JupyterHub serves it. */
  get available() {
    return Boolean(PageConfig.getOption('hubPrefix') && this.token);
  }

  async request(method, suffix = '', timeout = 10000) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeout);
    let response;
    try {
      response = await fetch(this.root + suffix, {
        method,
        headers: { Authorization: `token ${this.token}` },
        credentials: 'omit',
        cache: 'no-store',
        signal: controller.signal
      });
    } catch (error) {
      throw new ServiceError(0, `the hub did not answer (${error.message || error})`);
    } finally {
      clearTimeout(timer);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const message = (body && body.message) || response.statusText;
      throw new ServiceError(response.status, message);
    }
    return body;
  }

  /** GET servers/USER[/SERVER]: state, host, the move under way, recent events. */
  server() {
    return this.request('GET');
  }

  /** The last entry of the server's history, or null where the hub keeps none. */
  async lastHistory() {
    try {
      const body = await this.request('GET', '/history?limit=1');
      const entries = (body && body.history) || [];
      return entries.length ? entries[entries.length - 1] : null;
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        return null;
      }
      throw error;
    }
  }

  migrate() {
    return this.request('POST', '/migrate');
  }

  suspend() {
    // a suspend waits for the final checkpoint: give it time
    return this.request('POST', '/suspend', 120000);
  }
}
