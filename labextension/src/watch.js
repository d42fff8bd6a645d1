// Polls the migrate service about this server and tells the user about moves.
//
// A notice puts the server in "Floating" for up to its deadline (AWS: 2 minutes); the poll
// finds it within `interval`, and polls faster while the server moves. The service runs in
// the hub, so it answers while this server is frozen.

import { Notification } from '@jupyterlab/apputils';

import {
  moveOutcome,
  movingMessage,
  RELOAD_MESSAGE,
  respawned,
  saw,
  tokenReplaced
} from './messages';

/** Poll periods, ms: normally, while a move is under way, and while the tab is hidden. */
const INTERVAL = { idle: 3000, moving: 1000, hidden: 15000 };

export class MoveWatcher {
  constructor(service, status) {
    this.service = service;
    this.status = status;
    this.server = null;
    this.notification = null; // the id of the "Moving" notification, while one is shown
    this.movingFrom = null; // the host the server is moving off
    this.timer = null;
    this.stopped = false;
    // what the polls saw, to tell a replaced page token from a passing error
    // (and the start time of the spawn this tab is on, from the first poll)
    this.seen = { worked: false, away: false, started: null };
  }

  start() {
    this.stopped = false;
    this.poll();
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) {
        this.pollSoon(0);
      }
    });
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  pollSoon(ms) {
    clearTimeout(this.timer);
    if (!this.stopped) {
      this.timer = setTimeout(() => this.poll(), ms);
    }
  }

  async poll() {
    let server = null;
    try {
      server = await this.service.server();
      if (respawned(this.seen, server)) {
        this.askToReload();
        return;
      }
      this.status.render(server);
      this.seen = saw(this.seen, server);
    } catch (error) {
      if (tokenReplaced(error.status, this.seen)) {
        this.askToReload();
        return;
      }
      this.status.render(null, error);
    }
    if (server) {
      try {
        await this.update(server);
      } catch (error) {
        console.warn('jupyterhub-migrating: could not tell the move', error);
      }
      this.server = server;
    }
    const moving = server && server.state === 'Floating';
    this.pollSoon(
      moving ? INTERVAL.moving : document.hidden ? INTERVAL.hidden : INTERVAL.idle
    );
  }

  /** This tab's token is gone with the old spawn: only a reload gets a new one. */
  askToReload() {
    this.stop(); // every further call is refused too
    this.status.renderStale(RELOAD_MESSAGE);
    if (this.notification !== null) {
      Notification.dismiss(this.notification);
      this.notification = null;
    }
    Notification.emit(RELOAD_MESSAGE, 'warning', {
      autoClose: false,
      actions: [
        {
          label: 'Reload',
          caption: 'Reload this page with a new token',
          displayType: 'accent',
          callback: () => window.location.reload()
        }
      ]
    });
  }

  async update(server) {
    const before = this.server;
    if (server.state === 'Floating') {
      if (this.notification === null) {
        this.movingFrom = server.host_id;
        this.notification = Notification.emit(movingMessage(server), 'in-progress', {
          autoClose: false
        });
      } else {
        // the time left counts down
        Notification.update({ id: this.notification, message: movingMessage(server) });
      }
      return;
    }
    if (this.notification !== null) {
      await this.finish(server);
      return;
    }
    // a move that began and ended between two polls (e.g. while the tab slept)
    if (
      before &&
      before.state === 'Running' &&
      server.state === 'Running' &&
      before.host_id &&
      server.host_id &&
      before.host_id !== server.host_id
    ) {
      this.movingFrom = before.host_id;
      this.notification = Notification.emit('Moved to a new host', 'in-progress', {
        autoClose: false
      });
      await this.finish(server);
    }
  }

  async finish(server) {
    const id = this.notification;
    this.notification = null;
    let entry = null;
    try {
      entry = await this.service.lastHistory();
    } catch (error) {
      entry = null; // the events say it too
    }
    let outcome;
    if (server.state === 'Running') {
      outcome = moveOutcome(server, entry, this.movingFrom);
    } else {
      outcome = { ok: false, message: `The server is ${server.state} now` };
    }
    Notification.update({
      id,
      message: outcome.message,
      type: outcome.ok ? 'success' : 'warning',
      // what was lost stays until the user reads it
      autoClose: outcome.ok ? 8000 : false
    });
  }
}
