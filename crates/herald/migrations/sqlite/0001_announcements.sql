-- Announcements (seed 003) and who acknowledged them.
CREATE TABLE announcements (
    id            TEXT PRIMARY KEY,          -- UUID v7: time-ordered, so id order is creation order
    message       TEXT NOT NULL,
    message_type  TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    active        BOOLEAN NOT NULL
);
-- At most one active announcement, enforced by the database even across replicas.
CREATE UNIQUE INDEX announcements_one_active ON announcements (active) WHERE active;
CREATE INDEX announcements_created ON announcements (created_at_ms);

CREATE TABLE acknowledgements (
    announcement_id TEXT NOT NULL REFERENCES announcements (id),
    user_id         TEXT NOT NULL,
    acked_at_ms     BIGINT NOT NULL,
    PRIMARY KEY (announcement_id, user_id)
);
