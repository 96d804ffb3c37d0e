// Rehearsal only: the JavaScript raven client for Node (npm `raven`, the rehearsal installs
// the version RAVEN_NODE pins) keeps sending events through the cut-over, as keep_sending.py
// does for Python: one message every 100 ms round-robin over the DSNs until STOP_FILE exists,
// one JSON line per event in OUT with whether the server answered 2xx ('logged') or, if not,
// why (the error raven emitted), and when the send began and ended. raven-node has no timeout.
//
//     node keep_sending.js DSNS_JSON OUT STOP_FILE NAME
'use strict';
const fs = require('fs');
const raven = require('raven');

const [dsnsPath, out, stop, name] = process.argv.slice(2);
const dsns = JSON.parse(fs.readFileSync(dsnsPath, 'utf8'));
const version = require('raven/package.json').version;
const clients = dsns.map((dsn) => new raven.Client(dsn));

function sendOne(n) {
  if (fs.existsSync(stop)) {
    return;
  }
  const index = n % clients.length;
  const client = clients[index];
  const message = `cut-over ${name} #${n} ✓`;
  let ident = null;
  let timestamp = null;
  const started = Date.now() / 1000;
  const done = (delivered, error) => {
    client.removeAllListeners('logged');
    client.removeAllListeners('error');
    fs.appendFileSync(out, JSON.stringify({
      client: name, version, n, dsn: index, event_id: ident && ident.id, timestamp,
      message, delivered, error: delivered ? null : String((error && error.message) || error),
      started, at: Date.now() / 1000,
    }) + '\n');
    setTimeout(() => sendOne(n + 1), 100);
  };
  client.once('logged', () => done(true));
  client.once('error', (error) => done(false, error));
  client.dataCallback = (kwargs) => {
    timestamp = kwargs.timestamp;
    return kwargs;
  };
  ident = client.captureMessage(message, { extra: { n } });
}

sendOne(0);
