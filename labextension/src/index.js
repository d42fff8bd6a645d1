// jupyterhub-migrating: this server's host and state in JupyterLab's status bar, Migrate
// and Suspend in its menu, a link to the hub's migrate page, and a notification when the
// server moves. Active in every server MigratingSpawner starts (a prebuilt extension in
// the package's wheel): nothing to install per user.

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';

import { MigrateService, servicePage } from './service';
import { COMMANDS, MoveStatus } from './status';
import { MoveWatcher } from './watch';

function addCommands(app, service, watcher) {
  const can = action => {
    const actions = watcher.server && watcher.server.actions;
    // a hub without `actions` in its answer: allow what fits a running server
    if (!actions) {
      return !watcher.server || watcher.server.state === 'Running';
    }
    return actions.includes(action);
  };
  app.commands.addCommand(COMMANDS.migrate, {
    label: 'Migrate to another host',
    caption: 'Move this server, its files and kernels to a new host',
    isEnabled: () => can('migrate'),
    execute: async () => {
      try {
        await service.migrate();
        watcher.pollSoon(0);
      } catch (error) {
        Notification.error(`Migrate failed: ${error.message}`, { autoClose: false });
      }
    }
  });
  app.commands.addCommand(COMMANDS.suspend, {
    label: 'Suspend server\u2026',
    caption: 'Checkpoint files and kernels, stop, and release the host',
    isEnabled: () => can('suspend'),
    execute: async () => {
      const answer = await showDialog({
        title: 'Suspend this server?',
        body:
          'Its files and kernels are kept in a checkpoint and its host is released. ' +
          'Resume it from the hub\u2019s migrate page or the hub home.',
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Suspend' })]
      });
      if (!answer.button.accept) {
        return;
      }
      watcher.stop();
      const id = Notification.emit('Suspending: saving files and kernels\u2026', 'in-progress', {
        autoClose: false
      });
      try {
        await service.suspend();
      } catch (error) {
        Notification.update({
          id,
          message: `Suspend failed: ${error.message}`,
          type: 'error',
          autoClose: false
        });
        watcher.start();
        return;
      }
      // this server is gone: the hub's page resumes it
      window.location.assign(servicePage());
    }
  });
  app.commands.addCommand(COMMANDS.page, {
    label: 'Open the hub\u2019s migrate page',
    caption: 'State, history, Migrate / Suspend / Resume / Cancel of your servers',
    execute: () => {
      window.open(servicePage(), '_blank', 'noopener');
    }
  });
}

const plugin = {
  id: 'jupyterhub-migrating:status',
  description: 'Host and state of this server, and notifications when it moves.',
  autoStart: true,
  requires: [IStatusBar],
  activate: (app, statusBar) => {
    const service = new MigrateService();
    if (!service.available) {
      // not a JupyterHub server (or no token in the page): nothing to ask
      return;
    }
    const status = new MoveStatus(app.commands);
    const watcher = new MoveWatcher(service, status);
    addCommands(app, service, watcher);
    statusBar.registerStatusItem(plugin.id, {
      item: status,
      align: 'left',
      rank: 1000
    });
    watcher.start();
  }
};

export default plugin;
