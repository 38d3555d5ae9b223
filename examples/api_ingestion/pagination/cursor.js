// A cursor-paged feed over json-server's `orders`, the way Stripe- or Slack-style APIs page:
//   GET /orders-feed?limit=10            -> {"data": [...10 orders], "next_cursor": "b2Q6MTA"}
//   GET /orders-feed?limit=10&cursor=... -> the orders after that one; "next_cursor": null at the end
// The cursor is opaque to the client (here: the last id, base64url-encoded); it stays valid when
// records are added, unlike an offset. Loaded with `json-server --middlewares cursor.js`.
module.exports = (req, res, next) => {
  if (req.method !== 'GET' || req.path !== '/orders-feed') return next();
  const limit = Math.max(1, Number(req.query.limit) || 10);
  let after = 0;
  if (req.query.cursor) {
    const text = Buffer.from(String(req.query.cursor), 'base64url').toString();
    if (!/^od:\d+$/.test(text)) return res.status(400).json({ error: 'bad cursor' });
    after = Number(text.slice(3));
  }
  const rest = req.app.db.get('orders').filter((o) => o.id > after).sortBy('id').value();
  const data = rest.slice(0, limit);
  const more = rest.length > limit;
  const last = data[data.length - 1];
  res.json({
    data,
    next_cursor: more ? Buffer.from(`od:${last.id}`).toString('base64url') : null,
  });
};
