-- The shop the database examples read: 200 customers and 1,000 orders.
--   createdb shop && psql -d shop -f setup.sql
CREATE TABLE customers (
    id         int8 PRIMARY KEY,
    name       text NOT NULL,
    email      text,
    tier       text NOT NULL DEFAULT 'free',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id          int8 PRIMARY KEY,
    customer_id int8 NOT NULL REFERENCES customers (id),
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- Incremental loads find changed rows through this index.
CREATE INDEX orders_updated_at ON orders (updated_at, id);

INSERT INTO customers (id, name, email, tier, updated_at)
SELECT i, 'customer ' || i, 'c' || i || '@example.com',
       (ARRAY['free', 'pro', 'team'])[1 + i % 3],
       TIMESTAMPTZ '2026-01-01 00:00:00Z' + i * INTERVAL '1 minute'
FROM generate_series(1, 200) i;

INSERT INTO orders (id, customer_id, amount, status, updated_at)
SELECT i, 1 + i % 200, round((i * 7.31) % 500, 2),
       (ARRAY['new', 'paid', 'shipped'])[1 + i % 3],
       -- Ten orders share each timestamp: the incremental example's boundary has ties.
       TIMESTAMPTZ '2026-01-01 00:00:00Z' + (i / 10) * INTERVAL '1 minute'
FROM generate_series(1, 1000) i;
