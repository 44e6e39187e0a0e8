-- Usage books (src/usage): the raw batches each replica sent, exactly once by their id, and the hourly
-- rows they add up to. Budget alerts are recorded once per client, period and threshold.

-- Up Migration
CREATE TABLE usage_batches (
  replica text NOT NULL,
  seq bigint NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  delivered_by text NOT NULL,
  body jsonb NOT NULL,
  PRIMARY KEY (replica, seq)
);
CREATE INDEX usage_batches_received_at ON usage_batches (received_at);

CREATE TABLE usage_hourly (
  hour timestamptz NOT NULL,
  client_id text NOT NULL,
  model text NOT NULL,
  source text NOT NULL,
  surface text NOT NULL,
  items bigint NOT NULL DEFAULT 0,
  tokens bigint NOT NULL DEFAULT 0,
  inference_ms numeric(24, 6) NOT NULL DEFAULT 0,
  cost numeric(30, 9) NOT NULL DEFAULT 0,
  PRIMARY KEY (client_id, hour, model, source, surface)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour);

CREATE TABLE budget_alerts (
  client_id text NOT NULL,
  period_start timestamptz NOT NULL,
  threshold numeric(6, 4) NOT NULL,
  spent numeric(30, 9) NOT NULL,
  budget numeric(30, 9) NOT NULL,
  alerted_at timestamptz NOT NULL DEFAULT now(),
  alerted_by text NOT NULL,
  PRIMARY KEY (client_id, period_start, threshold)
);

-- Down Migration
DROP TABLE budget_alerts;
DROP TABLE usage_hourly;
DROP TABLE usage_batches;
