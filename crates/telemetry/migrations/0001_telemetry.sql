-- Spans and log lines every process of a `minicloud serve` deployment shares (issue 20).
CREATE TABLE spans (
    trace_id        text NOT NULL,
    span_id         text NOT NULL,
    parent_span_id  text,
    name            text NOT NULL,
    service         text NOT NULL,
    -- The span names its service (or came from a function): a span that does not
    -- belongs to its parent's, and does not count as a service of the trace.
    named_service   boolean NOT NULL,
    kind            text NOT NULL,
    start_unix_nano bigint NOT NULL,
    end_unix_nano   bigint NOT NULL,
    status          text NOT NULL,
    status_message  text,
    attributes      jsonb NOT NULL,
    request_id      text,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX spans_by_start ON spans (start_unix_nano);
CREATE INDEX spans_by_stored ON spans (stored_at);
CREATE INDEX spans_by_request ON spans (request_id) WHERE request_id IS NOT NULL;

CREATE TABLE log_lines (
    id             bigserial PRIMARY KEY,
    time_unix_nano bigint NOT NULL,
    level          text NOT NULL,
    target         text NOT NULL,
    message        text NOT NULL,
    service        text,
    request_id     text,
    fields         jsonb NOT NULL
);
CREATE INDEX log_lines_by_time ON log_lines (time_unix_nano);
CREATE INDEX log_lines_by_request ON log_lines (request_id) WHERE request_id IS NOT NULL;
