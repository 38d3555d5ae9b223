-- The target: orders must refer to a known customer.
CREATE TABLE customers (id int8 PRIMARY KEY);
INSERT INTO customers SELECT generate_series(1, 5);
CREATE TABLE orders (
    id          int8 PRIMARY KEY,
    customer_id int8 NOT NULL REFERENCES customers,
    amount      int8
);
