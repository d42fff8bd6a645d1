// The status-bar item: host and state; a click opens its menu.

import { Menu, Widget } from '@lumino/widgets';

import { statusText } from './messages';

export const COMMANDS = {
  migrate: 'jupyterhub-migrating:migrate',
  suspend: 'jupyterhub-migrating:suspend',
  page: 'jupyterhub-migrating:open-page'
};

export class MoveStatus extends Widget {
  constructor(commands) {
    super();
    this.addClass('jp-MigratingStatus');
    this.node.title = 'This server\u2019s host (click for Migrate, Suspend, the hub page)';
    this.label = document.createElement('span');
    this.label.className = 'jp-MigratingStatus-label';
    this.label.textContent = 'host \u2026';
    this.node.appendChild(this.label);
    this.menu = new Menu({ commands });
    this.menu.addClass('jp-MigratingStatus-menu');
    this.menu.addItem({ command: COMMANDS.migrate });
    this.menu.addItem({ command: COMMANDS.suspend });
    this.menu.addItem({ type: 'separator' });
    this.menu.addItem({ command: COMMANDS.page });
    this.node.addEventListener('click', () => this.openMenu());
  }

  openMenu() {
    const rect = this.node.getBoundingClientRect();
    // the status bar is at the bottom: open upwards
    this.menu.open(rect.left, rect.top, { forceY: false });
  }

  /** This page's token was replaced (the server was resumed): say so, not "host ?". */
  renderStale(message) {
    this.label.textContent = 'reload page';
    this.node.title = message;
    this.node.dataset.state = 'stale';
  }

  /** Show the service's answer about this server (or why there is none). */
  render(server, error) {
    if (error) {
      this.label.textContent = 'host ?';
      this.node.title = `The migrate service cannot be asked: ${error.message}`;
      this.node.dataset.state = 'unknown';
      return;
    }
    this.label.textContent = statusText(server);
    this.node.title = `Host ${server.host_id || '-'}${
      server.address ? ` (${server.address})` : ''
    }: ${server.state}. Click for Migrate, Suspend, the hub page.`;
    this.node.dataset.state = server.state;
  }
}
