//! A publication request made a [`Publication`]. A backend's: the one set of checks the
//! HTTP API, its batches and the backend publisher over WebSocket share — exactly one
//! target, a valid channel name, and on `sync:` a valid sync event (a targeted
//! `device_command` goes to that device's priority lane and never into history,
//! DESIGN §5).

use std::time::Instant;

use serde_json::Value;

use super::namespace::{Denied, Namespaces};
use super::{Exclude, Publication, Route, Target};
use crate::auth::Identity;
use crate::config::namespaces::SYNC;
use crate::ids::{ConnId, UserId};
use crate::protocol::channel::validate_channel;
use crate::protocol::publish::{check_idempotency_key, too_deep, within_depth, PublishRequest};
use crate::protocol::sync;

/// Why a user may not make a publication only a backend may.
pub const BACKEND_ONLY: &str = "only a backend (an API key or an admin token) may publish to a user, a group or everyone, or exclude recipients";

/// The checks every publication's body passes: nesting depth and the idempotency key.
fn check_body(data: &serde_json::value::RawValue, key: Option<&str>) -> Result<(), Denied> {
    if !within_depth(data) {
        return Err(Denied::BadRequest(too_deep()));
    }
    if let Some(key) = key {
        check_idempotency_key(key).map_err(Denied::BadRequest)?;
    }
    Ok(())
}

/// The publication `req` asks for, or why it is a bad request.
pub fn publication_of(req: PublishRequest, accepted: Instant) -> Result<Publication, Denied> {
    let target = match (req.channel, req.user, req.group, req.all) {
        (Some(c), None, None, None | Some(false)) => {
            validate_channel(&c).map_err(Denied::BadRequest)?;
            Target::Channel(c)
        }
        (None, Some(u), None, None | Some(false)) => Target::User(UserId::from(u)),
        (None, None, Some(g), None | Some(false)) => Target::Group(g),
        (None, None, None, Some(true)) => Target::All,
        _ => {
            return Err(Denied::BadRequest(
                "give exactly one target: `channel`, `user`, `group` or `all: true`".into(),
            ));
        }
    };
    check_body(&req.data, req.idempotency_key.as_deref())?;
    let mut route = Route::Normal;
    if let Target::Channel(c) = &target {
        if c.split_once(':').is_some_and(|(ns, _)| ns == SYNC) {
            let value: Value = serde_json::from_str(req.data.get())
                .map_err(|e| Denied::BadRequest(format!("invalid data: {e}")))?;
            route = Route::of_sync(&sync::validate(&value).map_err(Denied::BadRequest)?);
        }
    }
    Ok(Publication {
        target,
        exclude: Exclude {
            user: req.exclude_user.map(UserId::from),
            conn: req.exclude_conn.map(ConnId::from),
            ..Exclude::default()
        },
        data: req.data,
        accepted,
        creator: None,
        route,
        idempotency_key: req.idempotency_key.map(String::into_boxed_str),
    })
}

/// The publication a user (not a backend) asks for — a client's `publish` frame, or a
/// user token on `POST /api/publish`: to a channel only, under the namespace's `publish`
/// rule for `who`, with `sync` validation. `exclude_conn` may name only one of `who`'s
/// own connections (the one that should not hear its echo): the exclusion is checked
/// against its owner wherever it is applied.
pub fn client_publication_of(
    req: PublishRequest,
    who: &Identity,
    namespaces: &Namespaces,
    accepted: Instant,
) -> Result<Publication, Denied> {
    if req.user.is_some() || req.group.is_some() || req.all.is_some() || req.exclude_user.is_some()
    {
        return Err(Denied::Forbidden(BACKEND_ONLY));
    }
    let Some(channel) = req.channel else {
        return Err(Denied::BadRequest("a publish needs a `channel`".to_owned()));
    };
    validate_channel(&channel).map_err(Denied::BadRequest)?;
    check_body(&req.data, req.idempotency_key.as_deref())?;
    let ns = namespaces.resolve(&channel)?;
    ns.may_publish(who)?;
    let mut route = Route::Normal;
    if ns.namespace == SYNC {
        let event = serde_json::from_str::<Value>(req.data.get())
            .map_err(|e| e.to_string())
            .and_then(|v| sync::validate(&v))
            .map_err(Denied::BadRequest)?;
        route = Route::of_sync(&event);
    }
    Ok(Publication {
        target: Target::Channel(channel),
        exclude: Exclude {
            conn: req.exclude_conn.map(ConnId::from),
            conn_owner: Some(who.user.clone()),
            ..Exclude::default()
        },
        data: req.data,
        accepted,
        creator: Some(who.user.clone()),
        route,
        idempotency_key: req.idempotency_key.map(String::into_boxed_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> PublishRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn exactly_one_target() {
        let now = Instant::now();
        let p = publication_of(
            request(r#"{"user":"42","data":1,"exclude_conn":"n-1"}"#),
            now,
        )
        .unwrap();
        assert_eq!(p.target, Target::User(UserId::from("42")));
        assert_eq!(p.exclude.conn, Some(ConnId::from("n-1")));
        assert_eq!(
            publication_of(request(r#"{"all":true,"data":1}"#), now)
                .unwrap()
                .target,
            Target::All
        );
        for bad in [
            r#"{"data":1}"#,
            r#"{"channel":"a","user":"b","data":1}"#,
            r#"{"all":false,"data":1}"#,
            r#"{"channel":"a b","data":1}"#,
            r#"{"channel":"sync:42","data":{"type":"nonsense"}}"#,
            r#"{"channel":"a","data":1,"idempotency_key":""}"#,
        ] {
            assert!(
                matches!(
                    publication_of(request(bad), now),
                    Err(Denied::BadRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
