// A strict API in front of json-server's `orders` (json-server --middlewares limits.js):
//
// - A quota: more than 8 requests in a rolling second are answered 429 with `Retry-After: 1`.
// - Scheduled trouble: the first request for page 3 and for page 9 is answered 429 with
//   `Retry-After: 1` (a throttled client); page 6 answers 503 twice (a server having a moment).
// - A request for a throttled page sooner than its Retry-After is counted as `too_early` and
//   throttled again: a client that does not honour Retry-After shows up here.
// - GET /_stats tells what happened (the test reads it).
// - GET /_outage?page=7 makes page 7 answer 503 (or `&status=404`) until GET /_outage.
const WINDOW_MS = 1000;
const QUOTA = 8;
const THROTTLE = { 3: 1, 9: 1 }; // page -> 429s to answer first
const UNAVAILABLE = { 6: 2 }; // page -> 503s to answer first

const recent = []; // times of recent requests to /orders
const attempts = {}; // page -> requests so far
const throttled = {}; // page -> { at, seconds } of its last 429
let outage = null; // { page, status }
const stats = { requests: 0, ok: 0, throttled: 0, over_quota: 0, unavailable: 0, too_early: 0, outage: 0, retry_gaps_ms: [] };

module.exports = (req, res, next) => {
  if (req.path === '/_stats') return res.json(stats);
  if (req.path === '/_outage') {
    outage = req.query.page ? { page: Number(req.query.page), status: Number(req.query.status) || 503 } : null;
    return res.json({ outage });
  }
  if (req.method !== 'GET' || req.path !== '/orders') return next();
  const now = Date.now();
  const page = Number(req.query._page) || 1;
  stats.requests += 1;
  const n = (attempts[page] = (attempts[page] || 0) + 1);
  const tooSoon = (seconds) => {
    throttled[page] = { at: now, seconds };
    res.set('Retry-After', String(seconds));
    return res.status(429).json({ error: 'slow down' });
  };
  const last = throttled[page];
  if (last) {
    if (now < last.at + last.seconds * 1000) {
      stats.too_early += 1;
      return tooSoon(1);
    }
    stats.retry_gaps_ms.push(now - last.at);
    delete throttled[page];
  }
  while (recent.length && recent[0] <= now - WINDOW_MS) recent.shift();
  recent.push(now);
  if (recent.length > QUOTA) {
    stats.over_quota += 1;
    return tooSoon(1);
  }
  if (outage && outage.page === page) {
    stats.outage += 1;
    return res.status(outage.status).json({ error: `page ${page} is down` });
  }
  if (n <= (THROTTLE[page] || 0)) {
    stats.throttled += 1;
    return tooSoon(1);
  }
  if (n <= (THROTTLE[page] || 0) + (UNAVAILABLE[page] || 0)) {
    stats.unavailable += 1;
    return res.status(503).json({ error: 'try again' });
  }
  stats.ok += 1;
  return next();
};
