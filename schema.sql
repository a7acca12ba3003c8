-- Mapstream schema. Applied at every start-up (idempotent), under an advisory lock so that
-- several instances starting together do not race. Every table is keyed by plan_id first so
-- that the store can be sharded by plan.

-- The event store. One row per event, never updated or deleted.
CREATE TABLE IF NOT EXISTS events (
    plan_id        text        NOT NULL,
    version        integer     NOT NULL CHECK (version > 0),
    -- Global order for readers of the whole log. A bigserial alone is not gap-free for
    -- readers (position 11 can commit before 10), so readers also use transaction_id: see
    -- read_log in server/store.py.
    position       bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    type           text        NOT NULL,
    schema_version smallint    NOT NULL DEFAULT 1,
    data           json        NOT NULL,  -- json, not jsonb: the exact bytes that were hashed
    actor          text        NOT NULL,
    command_id     text,
    correlation_id text,
    recorded_at    timestamptz NOT NULL,
    -- NULL: both sides see the event; 'buyer' / 'seller': an internal item of that side.
    audience       text        CHECK (audience IN ('buyer', 'seller')),
    data_digest    text        NOT NULL,
    hash           text        NOT NULL,
    PRIMARY KEY (plan_id, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS events_position ON events (position);
CREATE INDEX IF NOT EXISTS events_log ON events (transaction_id, position);
CREATE INDEX IF NOT EXISTS events_recorded_at ON events (plan_id, recorded_at);

-- The database itself refuses to change history, whatever the code does.
CREATE OR REPLACE FUNCTION mapstream_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on events is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'append a correcting event instead';
END
$$;
CREATE OR REPLACE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION mapstream_refuse_change();
CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION mapstream_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC;

-- Inline projection of each plan's state, written in the append transaction (read-your-writes).
-- It is a cache of fold(evolve, events) and can always be rebuilt. To keep appends O(1) in the
-- size of a plan, the state is rewritten every few versions (state_version); readers fold
-- the events after it. The row also serialises writers of one plan: an append updates it
-- WHERE version = base.
CREATE TABLE IF NOT EXISTS plans (
    plan_id     text        PRIMARY KEY,
    version     integer     NOT NULL,
    head_hash   text        NOT NULL,
    -- the fold at state_version; the current state is it plus the few events after it
    state       json        NOT NULL,
    state_version integer   NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- added after the first release: databases created before it get the column here
ALTER TABLE plans ADD COLUMN IF NOT EXISTS state_version integer NOT NULL DEFAULT 0;

-- Idempotency: each command's first event is flagged command_first, and a command id can be
-- recorded once per plan: a repeated id fails inside the append statement, so two racing
-- retries append once. The answer to a repeat is rebuilt from the command's events.
ALTER TABLE events ADD COLUMN IF NOT EXISTS command_first boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX IF NOT EXISTS events_command_once ON events (plan_id, command_id)
    WHERE command_first;

-- Checkpoints of asynchronous projections, committed with their read-model changes.
CREATE TABLE IF NOT EXISTS checkpoints (
    name           text    PRIMARY KEY,
    transaction_id xid8    NOT NULL DEFAULT '0',
    position       bigint  NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Presence: who is viewing which plan (and item) right now. Ephemeral, never an event:
-- UNLOGGED, rows expire unless the instance holding the socket refreshes them.
CREATE UNLOGGED TABLE IF NOT EXISTS presence (
    plan_id    text        NOT NULL,
    socket_id  text        NOT NULL,
    user_email text        NOT NULL,
    side       text        NOT NULL,
    item_id    text,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (plan_id, socket_id)
);
CREATE INDEX IF NOT EXISTS presence_expiry ON presence (expires_at);

-- Invites: how buyers get in without an account anywhere. Only a hash of the code is kept;
-- accepting claims the row atomically (one-time) and appends a MemberAdded event.
CREATE TABLE IF NOT EXISTS invites (
    plan_id     text        NOT NULL,
    invite_id   text        NOT NULL,
    code_hash   text        NOT NULL UNIQUE,
    side        text        NOT NULL CHECK (side IN ('buyer', 'seller')),
    role        text        NOT NULL CHECK (role IN ('owner', 'editor', 'commenter', 'viewer')),
    email       text,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by text,
    revoked_at  timestamptz,
    PRIMARY KEY (plan_id, invite_id)
);

-- The audit trail read model: one human-readable row per event (projections/audit.py),
-- written by the asynchronous projection runner with its checkpoint 'audit' in the same
-- transaction. `row` is the whole row as the API returns it; the other columns filter.
CREATE TABLE IF NOT EXISTS audit_trail (
    plan_id     text        NOT NULL,
    version     integer     NOT NULL,
    position    bigint      NOT NULL,
    recorded_at timestamptz NOT NULL,
    type        text        NOT NULL,
    actor       text        NOT NULL,
    actor_name  text        NOT NULL,
    items       text[]      NOT NULL,
    -- NULL: both sides may read the row; 'buyer' / 'seller': that side only
    audience    text,
    row         json        NOT NULL,
    PRIMARY KEY (plan_id, version)
);
CREATE INDEX IF NOT EXISTS audit_trail_time ON audit_trail (plan_id, recorded_at);

-- Snapshots: the fold of a plan every few versions, so reading history is fast. A cache: used
-- only when `hash` is the stored event's hash at `version` and `schema` is the fingerprint of
-- the current Plan struct (projections/snapshots.py); anything else is ignored and rebuilt.
CREATE TABLE IF NOT EXISTS snapshots (
    plan_id    text        NOT NULL,
    version    integer     NOT NULL,
    schema     text        NOT NULL,
    hash       text        NOT NULL,
    state      json        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, schema, version)
);

-- presence of an internal item: only that side may see which item a viewer is on
ALTER TABLE presence ADD COLUMN IF NOT EXISTS item_side text;

-- User templates: plan skeletons (domain/templates.py) saved with POST /templates or
-- POST /plans/{id}/save-as-template. Built-in templates live in the code, not here. `body` is
-- the msgspec-encoded Template; a template is visible to the user who saved it.
CREATE TABLE IF NOT EXISTS templates (
    template_id text        PRIMARY KEY,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    body        json        NOT NULL
);
CREATE INDEX IF NOT EXISTS templates_by_author ON templates (created_by, created_at);

-- Portfolio analytics read model: one summary row per plan (projections/analytics.py), written
-- by the asynchronous projection runner with its checkpoint 'analytics' in the same
-- transaction. `figures` is the whole PlanFigures row; GET /analytics aggregates the rows of
-- one seller organisation. `seller_members`: who besides admins may read that organisation.
CREATE TABLE IF NOT EXISTS analytics_plans (
    plan_id        text        PRIMARY KEY,
    version        integer     NOT NULL,
    seller_org     text        NOT NULL,
    seller_members text[]      NOT NULL,
    figures        json        NOT NULL
);
CREATE INDEX IF NOT EXISTS analytics_plans_org ON analytics_plans (seller_org);

-- -- webhooks (server/webhooks.py) --------------------------------------------------------
-- Subscriptions of a seller organisation to event types. `secret` signs the deliveries (it
-- must be readable to sign, so it is stored as is). A subscription owes exactly the events
-- of transactions its creating statement could not see: `created_snapshot` is that
-- statement's pg_current_snapshot() as text. A deleted one keeps its row (and its
-- deliveries) with deleted_at set.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    subscription_id      text        PRIMARY KEY,
    seller_org           text        NOT NULL,
    url                  text        NOT NULL,
    events               text[]      NOT NULL,  -- event types, or {'*'}
    secret               text        NOT NULL,
    description          text        NOT NULL DEFAULT '',
    created_by           text        NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    created_snapshot     text        NOT NULL,
    deleted_at           timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_org ON webhook_subscriptions (seller_org);
-- After a secret rotation the previous secret also signs deliveries until its time is up.
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS previous_secret text;
ALTER TABLE webhook_subscriptions ADD COLUMN IF NOT EXISTS previous_secret_until timestamptz;

-- The outbox: one row per (plan, subscription, event), written by the outbox projection with
-- its checkpoint 'webhooks' in the same transaction. `body` is the exact JSON that is signed
-- and sent on every attempt. The delivery worker sends, per (subscription, plan), the lowest
-- pending version only, so a plan's events arrive in version order.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    plan_id         text        NOT NULL,
    subscription_id text        NOT NULL,
    version         integer     NOT NULL,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    type            text        NOT NULL,
    body            json        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'parked')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (plan_id, subscription_id, version)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending
    ON webhook_deliveries (subscription_id, plan_id, version) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_log
    ON webhook_deliveries (subscription_id, transaction_id, position);
-- -- end of webhooks ------------------------------------------------------------------------
