//! Revocations across nodes (DESIGN §13): a node that is given one keeps it, closes its
//! own connections the revocation refuses, stores it in the Redis hash
//! `<prefix>:revoked` (merged with what is there: the later `before`, the later
//! `until`) and tells the other nodes over the bus. A node reads the whole hash each
//! time its bus subscription is confirmed — at start, and after an outage, when it may
//! have missed orders — so a node that joins later refuses the same tokens.
//!
//! Hash fields: `u:<user id>` → `<before>:<until>`, `t:<jti>` → `:<until>` (Unix
//! seconds). Records past their `until` are skipped when read and removed by the next
//! write of the same field; the hash itself expires with its latest record.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use crate::auth::revoked::{Revocation, MAX_KEEP_S};
use crate::hub::Hub;
use crate::ids::UserId;

/// Stores one record, merged with the field's current value (KEYS[1] = the hash;
/// ARGV[1] = field, ARGV[2] = before or '', ARGV[3] = until, ARGV[4] = now).
pub const STORE: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local before, untl = tonumber(ARGV[2]), tonumber(ARGV[3])
if old then
  local ob, ou = string.match(old, '^(%d*):(%d+)$')
  if ou and tonumber(ou) > tonumber(ARGV[4]) then
    if before and ob ~= '' and tonumber(ob) > before then before = tonumber(ob) end
    if tonumber(ou) > untl then untl = tonumber(ou) end
  end
end
local value = ':' .. string.format('%d', untl)
if before then value = string.format('%d', before) .. value end
redis.call('HSET', KEYS[1], ARGV[1], value)
local ttl = untl - tonumber(ARGV[4])
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1";

/// The hash's key.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:revoked")
}

/// The command that stores `r` (see [`STORE`]).
pub fn store_cmd(prefix: &str, r: &Revocation, now: u64) -> redis::Cmd {
    let (field, before) = field_of(r);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(STORE)
        .arg(1)
        .arg(key(prefix))
        .arg(field)
        .arg(before.map(|b| b.to_string()).unwrap_or_default())
        .arg(r.until())
        .arg(now);
    cmd
}

fn field_of(r: &Revocation) -> (String, Option<u64>) {
    match r {
        Revocation::User { user, before, .. } => (format!("u:{}", user.as_str()), Some(*before)),
        Revocation::Token { id, .. } => (format!("t:{id}"), None),
    }
}

/// The record a hash field holds, if it is one (and not past its `until`).
pub fn parse_field(field: &str, value: &str, now: u64) -> Option<Revocation> {
    let (before, until) = value.split_once(':')?;
    let until: u64 = until.parse().ok()?;
    if until <= now || until > now.saturating_add(MAX_KEEP_S) {
        return None;
    }
    match field.split_once(':')? {
        ("u", user) if !user.is_empty() => Some(Revocation::User {
            user: UserId::from(user),
            before: before.parse().ok()?,
            until,
        }),
        ("t", id) if !id.is_empty() && before.is_empty() => Some(Revocation::Token {
            id: Arc::from(id),
            until,
        }),
        _ => None,
    }
}

/// Reads every record of the hash into `hub` (closing local connections they refuse);
/// answers how many were kept. Bounded: at most
/// [`MAX_RECORDS`](crate::auth::revoked::MAX_RECORDS) of each kind are kept.
pub async fn load(
    hub: &Hub,
    conn: &mut (impl ConnectionLike + Send),
    prefix: &str,
) -> redis::RedisResult<usize> {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key(prefix))
        .query_async(conn)
        .await?;
    let now = crate::auth::jwt::now_unix();
    let mut kept = 0;
    for (field, value) in fields {
        match parse_field(&field, &value, now) {
            Some(r) => {
                if hub.revoke(&r).is_ok() {
                    kept += 1;
                }
            }
            None => tracing::debug!(field, "broker: skipped a revocation record"),
        }
    }
    Ok(kept)
}

/// A revocation as it travels on the bus.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct RevokeOrder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    pub until: u64,
}

impl RevokeOrder {
    pub fn of(r: &Revocation) -> RevokeOrder {
        match r {
            Revocation::User {
                user,
                before,
                until,
            } => RevokeOrder {
                u: Some(user.to_string()),
                b: Some(*before),
                t: None,
                until: *until,
            },
            Revocation::Token { id, until } => RevokeOrder {
                u: None,
                b: None,
                t: Some(id.to_string()),
                until: *until,
            },
        }
    }

    /// The revocation, if the order names exactly one user (with `before`) or token.
    pub fn into_revocation(self) -> Option<Revocation> {
        match (self.u, self.b, self.t) {
            (Some(u), Some(before), None) if !u.is_empty() => Some(Revocation::User {
                user: UserId::from(u),
                before,
                until: self.until,
            }),
            (None, None, Some(t)) if !t.is_empty() => Some(Revocation::Token {
                id: Arc::from(t),
                until: self.until,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_odd_ones_are_skipped() {
        let now = 1_000;
        let user = Revocation::User {
            user: UserId::from("a:b"),
            before: 900,
            until: 2_000,
        };
        assert_eq!(parse_field("u:a:b", "900:2000", now), Some(user.clone()));
        assert_eq!(field_of(&user).0, "u:a:b");
        let token = Revocation::Token {
            id: Arc::from("j-1"),
            until: 2_000,
        };
        assert_eq!(parse_field("t:j-1", ":2000", now), Some(token));
        for (f, v) in [
            ("u:a", "900:999"),       // lapsed
            ("u:a", ":2000"),         // no before
            ("t:j", "5:2000"),        // a token has no before
            ("x:a", "1:2000"),        // unknown kind
            ("u:", "1:2000"),         // no name
            ("u:a", "garbage"),       // not a record
            ("u:a", "1:99999999999"), // beyond the longest keep
        ] {
            assert_eq!(parse_field(f, v, now), None, "{f} {v}");
        }
    }

    #[test]
    fn an_order_names_one_user_or_one_token() {
        let r = Revocation::User {
            user: UserId::from("u"),
            before: 5,
            until: 9,
        };
        assert_eq!(RevokeOrder::of(&r).into_revocation(), Some(r));
        let both = RevokeOrder {
            u: Some("u".into()),
            b: Some(1),
            t: Some("t".into()),
            until: 9,
        };
        assert_eq!(both.into_revocation(), None);
    }
}
