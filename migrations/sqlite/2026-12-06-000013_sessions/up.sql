-- A login session: a password login opens one, each refresh carries it on,
-- and every access token names it (claim `sid`). Logging out, a change of
-- the user's password or groups and the user's deletion end it: its refresh
-- tokens go with it, and an access token naming it is refused.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    -- When its latest refresh token expires; expired sessions are pruned.
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
-- Refresh tokens now belong to a session. Those issued before there were
-- sessions end here: their holders log in again.
DROP TABLE refresh_tokens;
CREATE TABLE refresh_tokens (
    -- SHA-256 of the token, hex: the token itself is never stored.
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);
