// What the widget says, from the service's JSON (pure functions: no DOM, no requests).
//
// The service's SERVER answer has `state`, `host_id`, and while Floating `move`
// {reason, deadline, from, to, phase} (or a bare `deadline`); a hub without those fields
// still has its events ("Moving (reason); N s to go", "Moved to HOST (addr) in N s; ...").

/** "2 min", "45 s", "now": how long until `deadline` (epoch seconds). */
export function timeLeft(deadline, now = Date.now() / 1000) {
  const left = Math.round(deadline - now);
  if (!Number.isFinite(left) || left <= 0) {
    return 'now';
  }
  if (left >= 90) {
    return `${Math.round(left / 60)} min`;
  }
  return `${left} s`;
}

function lastEvent(server, prefix) {
  const events = (server && server.events) || [];
  for (let i = events.length - 1; i >= 0; i--) {
    const message = events[i].message || '';
    if (message.startsWith(prefix)) {
      return events[i];
    }
  }
  return null;
}

// the service's reason words, as a sentence reads them
const REASONS = {
  request: 'requested',
  rebalance: 'rebalance recommendation',
  'host lost': 'the host was lost'
};

/** A move's reason as a user reads it: "reclaim notice", "requested by alice", ... */
function plainReason(reason) {
  // the engine's reasons name the host ("reclaim notice for local-11-..."): the user's
  // page needs the kind only
  const plain = String(reason || 'move').replace(/ for \S+$/, '');
  return REASONS[plain] || plain;
}

/** Time left is worth telling for a notice; a requested move has no real deadline. */
function tellsTimeLeft(reason, deadline, now) {
  return Boolean(deadline) && (/notice/.test(reason) || deadline - now < 600);
}

/** The move under way: {reason, deadline} (deadline may be null). */
export function moveUnderWay(server) {
  const move = server.move || {};
  let reason = move.reason;
  let deadline = move.deadline || server.deadline || null;
  if (!reason || !deadline) {
    const event = lastEvent(server, 'Moving (');
    const match = event && /^Moving \((.*)\); (\d+) s to go/.exec(event.message);
    if (match) {
      reason = reason || match[1];
      deadline = deadline || event.time + Number(match[2]);
    }
  }
  return { reason: plainReason(reason), deadline };
}

/** "Moving to a new host: reclaim notice, 2 min left. The page may pause ..." */
export function movingMessage(server, now = Date.now() / 1000) {
  const { reason, deadline } = moveUnderWay(server);
  let left = '';
  if (tellsTimeLeft(reason, deadline, now)) {
    const time = timeLeft(deadline, now);
    // a notice at its deadline (or a 0 s one): "now left" reads wrong
    left = time === 'now' ? ', no time left' : `, ${time} left`;
  }
  return `Moving to a new host: ${reason}${left}. The page may pause for a few seconds.`;
}

function lostText(lost) {
  if (!lost) {
    return '';
  }
  if (typeof lost === 'string') {
    return lost;
  }
  const parts = [];
  const names = Object.values(lost.variables || {}).flat();
  if (names.length) {
    parts.push(`variables ${names.join(', ')} were lost`);
  }
  const cells = lost.interrupted_cells || [];
  if (cells.length) {
    parts.push(`${cells.length} running cell${cells.length > 1 ? 's were' : ' was'} interrupted`);
  }
  const fresh = lost.kernels_fresh || [];
  if (fresh.length) {
    parts.push(`${fresh.length} kernel${fresh.length > 1 ? 's' : ''} restarted empty`);
  }
  if (lost.files) {
    parts.push(lost.files);
  }
  return parts.join('; ');
}

/**
 * How the move ended: {ok, message}. `entry` is the last history entry (or null);
 * `server` the service's answer after the move; `from` the host the page was on.
 */
export function moveOutcome(server, entry, from) {
  if (entry && entry.kind === 'move' && entry.from_host === from) {
    if (entry.outcome && entry.outcome !== 'ok') {
      return { ok: false, message: `The move failed: ${entry.error || 'unknown error'}` };
    }
    const hold = entry.hold_seconds != null ? entry.hold_seconds : entry.duration_seconds;
    const took = hold != null ? ` in ${Number(hold).toFixed(1)} s` : '';
    const lost = lostText(entry.lost);
    const message = `Moved to ${entry.to_host || server.host_id}${took}`;
    return lost ? { ok: false, message: `${message}; ${lost}` } : { ok: true, message };
  }
  const moved = lastEvent(server, 'Moved to ');
  if (moved) {
    // "Moved to HOST (ADDRESS) in N s[; what was lost]"
    const match = /^Moved to (\S+) \([^)]*\) in ([\d.]+ s)(?:; (.*))?$/.exec(moved.message);
    if (match) {
      const message = `Moved to ${match[1]} in ${match[2]}`;
      return match[3]
        ? { ok: false, message: `${message}; ${match[3]}` }
        : { ok: true, message };
    }
    return { ok: true, message: moved.message };
  }
  const failed = lastEvent(server, 'Move failed');
  if (failed) {
    return { ok: false, message: failed.message };
  }
  return { ok: true, message: `Moved to ${server.host_id}` };
}

/** The status bar's text: "local-11-5d1c43 · Running". */
export function statusText(server) {
  if (!server) {
    return 'host ?';
  }
  const host = server.host_id || 'no host';
  return `${host} · ${server.state}`;
}

/** What the widget says when this page's token stopped working (see tokenReplaced). */
export const RELOAD_MESSAGE =
  'Your server was suspended, stopped or started again: reload this page to reconnect.';

/**
 * Whether this tab is on a spawn that is gone: the server is back (Starting, Running, ...)
 * after it was seen Suspended or Stopped, or it runs a spawn started at another time than
 * the one this tab first saw (`seen.started`: the hub's start time of the spawn, which a
 * move keeps and a Resume or Start sets anew), so a Suspend and Resume between two polls is
 * not missed. The new spawn's server refuses the page's old token (the service may still
 * take it), so only a reload reconnects the tab.
 */
export function respawned(seen, server) {
  if (!seen || !server || ['Suspended', 'Stopped'].includes(server.state)) {
    return false;
  }
  if (seen.away) {
    return true;
  }
  return Boolean(seen.started && server.started && server.started !== seen.started);
}

/**
 * What a successful poll of `server` adds to `seen` ({worked, away, started}; see
 * respawned and tokenReplaced): the first spawn start time this tab saw is kept.
 */
export function saw(seen, server) {
  return {
    worked: true,
    away: Boolean(seen.away) || ['Suspended', 'Stopped'].includes(server.state),
    started: seen.started || server.started || null
  };
}

/**
 * Whether a failed service call means this page's token was replaced: JupyterHub re-creates
 * the server's OAuth client at each spawn, so after a Suspend/Resume (or Stop/Start) the
 * token in an open tab is refused. `seen` is {worked, away}: a call had succeeded before,
 * and the server was seen Suspended or Stopped. A 403 after calls worked is the same (the
 * tab may have slept through the stop); a 401 only after the server was seen away.
 */
export function tokenReplaced(status, seen) {
  if (!seen || !seen.worked) {
    return false;
  }
  return status === 403 || (status === 401 && Boolean(seen.away));
}
