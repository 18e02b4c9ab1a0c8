// Peer for bench/run.sh --peers: Meta's sample webhook receiver
// (fbsamples/graph-api-webhooks-samples, heroku/index.js) on Express: it checks
// X-Hub-Signature-256 over the raw body with the app secret, answers 401 without a
// signature and 403 with a wrong one, parses the JSON, keeps the event in an array in
// memory, as the sample does, and answers 200. Nothing is stored durably or forwarded.
// Unlike the sample it logs nothing per request, and appends with push() where the
// sample calls unshift(), which copies the whole array on every event.
//
// Usage: APP_SECRET=... node receiver.js [PORT] [HOST]
//   PORT (or env PORT) [5000], HOST (or env HOST) [127.0.0.1]; the secret only from
//   the environment (APP_SECRET), so that it does not show in ps.
// Routes: POST / and POST /facebook (the webhook), GET /count (events kept).
'use strict';

const crypto = require('crypto');
const express = require('express');

const secret = process.env.APP_SECRET;
if (!secret) {
  console.error('APP_SECRET is not set');
  process.exit(2);
}
const port = Number(process.argv[2] || process.env.PORT || 5000);
const host = process.argv[3] || process.env.HOST || '127.0.0.1';

const receivedUpdates = [];
const app = express();
app.disable('x-powered-by');

// The raw bytes, whatever the Content-Type: the signature is over them.
app.use(express.raw({ type: () => true, limit: '1mb' }));

function signatureValid(body, header) {
  const expected = Buffer.from(
    'sha256=' + crypto.createHmac('sha256', secret).update(body).digest('hex'));
  const given = Buffer.from(header);
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

app.post(['/', '/facebook'], (req, res) => {
  const header = req.get('X-Hub-Signature-256');
  if (!header) {
    res.sendStatus(401);
    return;
  }
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  if (!signatureValid(body, header)) {
    res.sendStatus(403);
    return;
  }
  let update;
  try {
    update = JSON.parse(body.toString('utf8'));
  } catch {
    res.sendStatus(400);
    return;
  }
  receivedUpdates.push(update);
  res.sendStatus(200);
});

app.get('/count', (req, res) => {
  res.type('text/plain').send(String(receivedUpdates.length));
});

const server = app.listen(port, host, () => {
  console.log(`listening on ${host}:${port}`);
});
server.on('error', (err) => {
  console.error(err.message);
  process.exit(1);
});
