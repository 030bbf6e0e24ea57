-- Rate limits shared by every worker process that uses one database.
--
-- A service's limit is counted by the service across all of a team's processes, so
-- a per-process window lets N processes send N times the limit. These tables hold one
-- sliding log of calls per service; take_rate_slot decides, under a per-service
-- advisory lock, whether a call fits now or how long to wait. The database's clock
-- (clock_timestamp) is the only clock, so processes on different hosts agree.
--
-- The tables are UNLOGGED: a crash of the server loses at most a minute of history,
-- which costs one burst, and every call is spared a WAL write. They sit beside the
-- pipeline's tables but are not part of its model: no job refers to them and a reset
-- leaves them alone (their rows expire by themselves).


-- name: install_rate_limits
-- Idempotent; a transaction-scoped advisory lock serialises processes installing at
-- once (CREATE ... IF NOT EXISTS alone races on the catalog).
DO $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pipeline-models rate limits install'));
    CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_calls (
        service text NOT NULL,
        at timestamptz NOT NULL,
        tokens integer NOT NULL
    );
    CREATE INDEX IF NOT EXISTS rate_limit_calls_by_service ON rate_limit_calls (service, at);
    CREATE UNLOGGED TABLE IF NOT EXISTS rate_limit_pauses (
        service text PRIMARY KEY,
        until timestamptz NOT NULL
    );
    CREATE OR REPLACE FUNCTION take_rate_slot(
        p_service text, p_requests integer, p_tokens integer, p_window double precision,
        p_cost integer
    ) RETURNS double precision
    LANGUAGE plpgsql AS $body$
    DECLARE
        now_at timestamptz := clock_timestamp();
        window_start timestamptz := now_at - make_interval(secs => p_window);
        paused_until timestamptz;
        used_requests integer;
        used_tokens bigint;
        frees_at timestamptz;
        wait double precision := 0;
    BEGIN
        -- One decision per service at a time, across every process.
        PERFORM pg_advisory_xact_lock(hashtext('pipeline-models rate ' || p_service));
        SELECT until INTO paused_until FROM rate_limit_pauses WHERE service = p_service;
        IF paused_until > now_at THEN
            RETURN extract(epoch FROM paused_until - now_at);
        END IF;
        DELETE FROM rate_limit_calls WHERE service = p_service AND at <= window_start;
        SELECT count(*), coalesce(sum(tokens), 0) INTO used_requests, used_tokens
        FROM rate_limit_calls WHERE service = p_service;
        IF p_requests IS NOT NULL AND used_requests + 1 > p_requests THEN
            -- The call that must leave the window before one more fits.
            SELECT at INTO frees_at FROM rate_limit_calls WHERE service = p_service
            ORDER BY at OFFSET used_requests - p_requests LIMIT 1;
            wait := greatest(wait, extract(epoch FROM frees_at - window_start));
        END IF;
        IF p_tokens IS NOT NULL AND used_tokens + p_cost > p_tokens THEN
            -- The oldest calls must leave the window until this one's tokens fit.
            SELECT at INTO frees_at FROM (
                SELECT at, sum(tokens) OVER (ORDER BY at ROWS UNBOUNDED PRECEDING) AS freed
                FROM rate_limit_calls WHERE service = p_service
            ) oldest_first
            WHERE used_tokens - freed + p_cost <= p_tokens
            ORDER BY at LIMIT 1;
            wait := greatest(wait, extract(epoch FROM frees_at - window_start));
        END IF;
        IF wait > 0 THEN
            RETURN wait;
        END IF;
        INSERT INTO rate_limit_calls (service, at, tokens) VALUES (p_service, now_at, p_cost);
        RETURN 0;
    END
    $body$;
END
$$;


-- name: take_rate_slot
-- $1 service, $2 requests per window (NULL: no limit), $3 tokens per window (NULL: no
-- limit), $4 window seconds, $5 this call's tokens. 0: the call is counted and may go;
-- otherwise the seconds to wait before asking again.
SELECT take_rate_slot($1, $2, $3, $4, $5)


-- name: pause_service
-- A server's Retry-After: no process calls $1 for $2 seconds (a longer pause stands).
INSERT INTO rate_limit_pauses (service, until)
VALUES ($1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (service) DO UPDATE SET until = greatest(rate_limit_pauses.until, excluded.until)


-- name: used_rate_window
-- Requests and tokens counted for $1 in the last $2 seconds.
SELECT count(*)::integer AS requests, coalesce(sum(tokens), 0)::bigint AS tokens
FROM rate_limit_calls
WHERE service = $1 AND at > clock_timestamp() - make_interval(secs => $2)
