//! The message between nodes: `v1|<offset>|<epoch>|<json body>`. The position sits in
//! front so the Redis script that assigns it can write it without parsing JSON; offset
//! and epoch are empty for a publication without history. The body names the origin
//! node and its sequence number (so the origin recognises its own echo), the target,
//! the exclusions, the route and the payload, or an announcement frame. A message that
//! does not parse is dropped and counted by the receiver, never trusted.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::gather::Query;
use super::revoke::RevokeOrder;
use crate::auth::revoked::Revocation;
use crate::hub::disconnect::{Disconnect, Whom, MAX_REASON_BYTES};
use crate::hub::{Exclude, Publication, Route, Target};
use crate::ids::{ConnId, UserId};

pub const VERSION: &str = "v1";

#[derive(Serialize, Deserialize, Default)]
pub struct Body {
    /// Origin node tag and its sequence number for this message.
    pub n: String,
    pub s: u64,
    /// Target kind (`a`ll, `u`ser, `g`roup, `c`hannel) and its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xd: Option<String>,
    /// The excluded connection's user and device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xcd: Option<(String, String)>,
    /// `xc` leaves out only a connection of this user (a user's own publish over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xo: Option<String>,
    /// A `device_command` lane; the inner value is the target device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<CommandLane>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<Box<RawValue>>,
    /// An announcement event: the text of the frame for every connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<String>,
    /// An order to close connections (`POST /api/…/disconnect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Order>,
    /// A question every other node answers (`broker::gather`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lq: Option<Query>,
    /// A revocation (`POST /api/users/{id}/revoke`, `/api/tokens/{jti}/revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rv: Option<RevokeOrder>,
}

/// A disconnect order between nodes: a connection id (`c`) or a user id (`u`), the
/// close code and reason.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Order {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    pub code: u16,
    pub why: String,
}

impl Order {
    pub fn of(d: &Disconnect) -> Order {
        let (c, u) = match &d.whom {
            Whom::Conn(id) => (Some(id.to_string()), None),
            Whom::User(user) => (None, Some(user.to_string())),
        };
        Order {
            c,
            u,
            code: d.code,
            why: d.reason.clone(),
        }
    }

    /// The order, if it names exactly one of a connection or a user, with a code an
    /// order may send and a reason that fits a close frame.
    pub fn into_disconnect(self) -> Result<Disconnect, Malformed> {
        let whom = match (self.c, self.u) {
            (Some(c), None) => Whom::Conn(ConnId::from(c)),
            (None, Some(u)) => Whom::User(UserId::from(u)),
            _ => {
                return Err(Malformed::Body(
                    "an order names one connection or user".into(),
                ))
            }
        };
        if !Disconnect::valid_code(self.code) || self.why.len() > MAX_REASON_BYTES {
            return Err(Malformed::Body(
                "an order's code or reason is out of range".into(),
            ));
        }
        Ok(Disconnect {
            whom,
            code: self.code,
            reason: self.why,
        })
    }
}

#[derive(Serialize, Deserialize)]
pub struct CommandLane {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A decoded message.
pub struct Envelope {
    pub position: Option<(u64, Arc<str>)>,
    pub body: Body,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("unknown envelope version")]
    Version,
    #[error("bad position")]
    Position,
    #[error("bad body: {0}")]
    Body(String),
}

impl Body {
    pub fn of_publication(node: &str, seq: u64, p: &Publication) -> Body {
        let (t, id) = match &p.target {
            Target::All => ("a", None),
            Target::User(u) => ("u", Some(u.to_string())),
            Target::Group(g) => ("g", Some(g.clone())),
            Target::Channel(c) => ("c", Some(c.clone())),
        };
        Body {
            n: node.to_owned(),
            s: seq,
            t: Some(t.to_owned()),
            id,
            xu: p.exclude.user.as_ref().map(UserId::to_string),
            xc: p.exclude.conn.as_ref().map(ConnId::to_string),
            xd: p.exclude.device.clone(),
            xcd: p
                .exclude
                .conn_device
                .as_ref()
                .map(|(u, d)| (u.to_string(), d.to_string())),
            xo: p.exclude.conn_owner.as_ref().map(UserId::to_string),
            cmd: match &p.route {
                Route::Normal => None,
                Route::Command(device) => Some(CommandLane {
                    device: device.clone(),
                }),
            },
            d: Some(p.data.clone()),
            f: None,
            x: None,
            lq: None,
            rv: None,
        }
    }

    pub fn of_order(node: &str, seq: u64, d: &Disconnect) -> Body {
        Body {
            n: node.to_owned(),
            s: seq,
            x: Some(Order::of(d)),
            ..Body::default()
        }
    }

    pub fn of_revocation(node: &str, seq: u64, r: &Revocation) -> Body {
        Body {
            n: node.to_owned(),
            s: seq,
            rv: Some(RevokeOrder::of(r)),
            ..Body::default()
        }
    }

    pub fn of_query(node: &str, seq: u64, query: Query) -> Body {
        Body {
            n: node.to_owned(),
            s: seq,
            lq: Some(query),
            ..Body::default()
        }
    }

    pub fn of_frame(node: &str, seq: u64, text: String) -> Body {
        Body {
            n: node.to_owned(),
            s: seq,
            f: Some(text),
            ..Body::default()
        }
    }

    /// The publication this body carries (None for an announcement frame).
    pub fn into_publication(self) -> Result<Option<Publication>, Malformed> {
        let Some(data) = self.d else {
            return match (&self.f, &self.x, &self.lq, &self.rv) {
                (None, None, None, None) => Err(Malformed::Body("neither data nor frame".into())),
                _ => Ok(None),
            };
        };
        let id = || {
            self.id
                .clone()
                .ok_or_else(|| Malformed::Body("target without a name".into()))
        };
        let target = match self.t.as_deref() {
            Some("a") => Target::All,
            Some("u") => Target::User(UserId::from(id()?)),
            Some("g") => Target::Group(id()?),
            Some("c") => Target::Channel(id()?),
            _ => return Err(Malformed::Body("unknown target kind".into())),
        };
        Ok(Some(Publication {
            target,
            exclude: Exclude {
                user: self.xu.map(UserId::from),
                conn: self.xc.map(ConnId::from),
                device: self.xd,
                conn_device: self.xcd.map(|(u, d)| (UserId::from(u), Arc::from(d))),
                conn_owner: self.xo.map(UserId::from),
            },
            data,
            accepted: std::time::Instant::now(),
            creator: None,
            route: match self.cmd {
                None => Route::Normal,
                Some(c) => Route::Command(c.device),
            },
            idempotency_key: None,
        }))
    }
}

/// `v1|||<body>`: the form without a position (the script adds one for history).
pub fn encode(body: &Body) -> String {
    let json = serde_json::to_string(body).unwrap_or_default();
    format!("{VERSION}|||{json}")
}

/// The JSON part alone, for the history script that writes the header itself.
pub fn encode_body(body: &Body) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

pub fn decode(raw: &[u8]) -> Result<Envelope, Malformed> {
    let text = std::str::from_utf8(raw).map_err(|_| Malformed::Body("not UTF-8".into()))?;
    let mut parts = text.splitn(4, '|');
    if parts.next() != Some(VERSION) {
        return Err(Malformed::Version);
    }
    let (offset, epoch) = (parts.next(), parts.next());
    let json = parts.next().ok_or(Malformed::Position)?;
    let position = match (offset, epoch) {
        (Some(""), Some("")) => None,
        (Some(o), Some(e)) if !e.is_empty() && e.len() <= 64 => {
            let o: u64 = o.parse().map_err(|_| Malformed::Position)?;
            Some((o, Arc::from(e)))
        }
        _ => return Err(Malformed::Position),
    };
    let body: Body = serde_json::from_str(json).map_err(|e| Malformed::Body(e.to_string()))?;
    Ok(Envelope { position, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication() -> Publication {
        Publication {
            target: Target::Channel("news:1".into()),
            exclude: Exclude {
                user: Some("u1".into()),
                conn: Some("abc-1".into()),
                device: None,
                conn_device: Some((UserId::from("u2"), Arc::from("tv"))),
                conn_owner: Some(UserId::from("u2")),
            },
            data: serde_json::value::to_raw_value(&serde_json::json!({"x": "a|b"})).unwrap(),
            accepted: std::time::Instant::now(),
            creator: None,
            route: Route::Command(Some("tv".into())),
            idempotency_key: None,
        }
    }

    #[test]
    fn a_publication_round_trips() {
        let raw = encode(&Body::of_publication("n1", 7, &publication()));
        let env = decode(raw.as_bytes()).unwrap();
        assert_eq!(env.position, None);
        assert_eq!((env.body.n.as_str(), env.body.s), ("n1", 7));
        let p = env.body.into_publication().unwrap().unwrap();
        let want = publication();
        assert_eq!(p.target, want.target);
        assert_eq!(p.exclude, want.exclude);
        assert_eq!(p.route, want.route);
        assert_eq!(p.data.get(), want.data.get());
    }

    #[test]
    fn a_disconnect_order_round_trips_and_a_bad_one_is_refused() {
        let d = Disconnect {
            whom: Whom::User(UserId::from("u|1")),
            code: 4004,
            reason: "bye".into(),
        };
        let env = decode(encode(&Body::of_order("n1", 3, &d)).as_bytes()).unwrap();
        let order = env.body.x.unwrap();
        assert_eq!(order.into_disconnect().unwrap(), d);
        for bad in [
            Order {
                c: Some("a-1".into()),
                u: Some("u".into()),
                code: 4004,
                why: String::new(),
            },
            Order {
                c: None,
                u: None,
                code: 4004,
                why: String::new(),
            },
            Order {
                c: None,
                u: Some("u".into()),
                code: 1002,
                why: String::new(),
            },
            Order {
                c: None,
                u: Some("u".into()),
                code: 4004,
                why: "x".repeat(124),
            },
        ] {
            assert!(bad.into_disconnect().is_err());
        }
    }

    #[test]
    fn a_position_written_in_front_is_read() {
        let body = encode_body(&Body::of_publication("n1", 1, &publication()));
        let raw = format!("v1|42|00ff|{body}");
        let env = decode(raw.as_bytes()).unwrap();
        assert_eq!(env.position, Some((42, Arc::from("00ff"))));
    }

    #[test]
    fn malformed_messages_are_refused_not_trusted() {
        for raw in [
            "",
            "v2|||{}",
            "v1|x|e|{}",
            "v1|1||{}",
            "v1|||",
            "v1|||{\"n\":1}",
            "v1|||[]",
        ] {
            assert!(decode(raw.as_bytes()).is_err(), "{raw}");
        }
        let no_payload = decode(br#"v1|||{"n":"a","s":1}"#).unwrap();
        assert!(no_payload.body.into_publication().is_err());
        let bad_target = decode(br#"v1|||{"n":"a","s":1,"t":"z","d":1}"#).unwrap();
        assert!(bad_target.body.into_publication().is_err());
        assert!(decode(&[0xff, 0xfe]).is_err());
    }
}
