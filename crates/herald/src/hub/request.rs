//! A backend's publication request made a [`Publication`]: the one set of checks the
//! HTTP API, its batches and the backend publisher over WebSocket share — exactly one
//! target, a valid channel name, and on `sync:` a valid sync event (a targeted
//! `device_command` goes to that device's priority lane and never into history,
//! DESIGN §5).

use std::time::Instant;

use serde_json::Value;

use super::namespace::Denied;
use super::{Exclude, Publication, Route, Target};
use crate::config::namespaces::SYNC;
use crate::ids::{ConnId, UserId};
use crate::protocol::channel::validate_channel;
use crate::protocol::publish::{check_idempotency_key, too_deep, within_depth, PublishRequest};
use crate::protocol::sync;

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
    if !within_depth(&req.data) {
        return Err(Denied::BadRequest(too_deep()));
    }
    if let Some(key) = &req.idempotency_key {
        check_idempotency_key(key).map_err(Denied::BadRequest)?;
    }
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
            device: None,
            conn_device: None,
        },
        data: req.data,
        accepted,
        creator: None,
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
