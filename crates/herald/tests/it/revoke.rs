//! Revoking tokens (DESIGN §13): `POST /api/users/{id}/revoke` refuses a user's tokens
//! issued before a time, `POST /api/tokens/{jti}/revoke` one token — at connect, on
//! `refresh`, and for connections holding such a token now (closed with 4002). Across
//! nodes in `scale_out.rs`.

use futures_util::StreamExt;
use herald::auth::jwt::now_unix;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// The close code and reason the server sends.
pub async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The upgrade's refusal for `token`, or None if it was accepted.
pub async fn refusal(s: &TestServer, token: &str) -> Option<(u16, Value)> {
    s.try_upgrade(&s.ws_url(token), &[]).await.err()
}

async fn revoke(s: &TestServer, path: &str, body: Value) -> (u16, Value) {
    s.post_json(path, &s.api_key.clone(), body).await
}

/// A token of `user` issued at `iat` with id `jti`.
fn token(s: &TestServer, user: &str, iat: Option<u64>, jti: Option<&str>) -> String {
    s.token_with(user, |c| {
        c.iat = iat;
        c.jti = jti.map(str::to_owned);
    })
}

#[tokio::test]
async fn a_user_revoked_before_t_cannot_use_an_older_token_and_is_closed() {
    let s = TestServer::start().await;
    let now = now_unix();
    let old = token(&s, "alice", Some(now - 100), None);
    let newer = token(&s, "alice", Some(now + 5), None);
    let (mut with_old, _) = s.connect_token(&old).await;
    let (mut with_newer, _) = s.connect_token(&newer).await;
    let (mut bob, _) = s.connect("bob").await;
    let (status, body) = revoke(&s, "/api/users/alice/revoke", json!({"before": now})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 1, "{body}");
    assert_eq!(body["forwarded"], false, "one node");
    assert_eq!(
        close_of(&mut with_old).await,
        Some((4002, "token revoked".to_owned()))
    );
    // The older token is refused at connect; so is one without `iat` (it cannot show
    // it is newer); a newer one, and other users, are not.
    let (status, body) = refusal(&s, &old).await.expect("refused");
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("token revoked"))
    );
    assert!(refusal(&s, &token(&s, "alice", None, None)).await.is_some());
    assert!(refusal(&s, &newer).await.is_none());
    assert!(refusal(&s, &s.token("bob")).await.is_none());
    for ws in [&mut with_newer, &mut bob] {
        send_text(ws, r#"{"type":"ping"}"#).await;
        assert_eq!(next_json(ws).await["type"], "pong", "still connected");
    }
    let refused = &s.stats().await["refused"]["revoked_token"];
    assert!(refused.as_u64().unwrap() >= 2, "{refused}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_revoked_token_id_is_refused_at_connect_and_on_refresh() {
    let s = TestServer::start().await;
    let now = now_unix();
    let (mut one, _) = s
        .connect_token(&token(&s, "u", Some(now), Some("j-1")))
        .await;
    let (mut two, _) = s
        .connect_token(&token(&s, "u", Some(now), Some("j-2")))
        .await;
    // `three` moves from j-3 to j-4 by a refresh: what counts is the token it holds now.
    let (mut three, _) = s
        .connect_token(&token(&s, "u", Some(now), Some("j-3")))
        .await;
    let refresh = json!({"type": "refresh", "token": token(&s, "u", Some(now), Some("j-4"))});
    send_text(&mut three, &refresh.to_string()).await;
    send_text(&mut three, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut three).await["type"], "pong");
    for jti in ["j-1", "j-3"] {
        let (status, body) = revoke(&s, &format!("/api/tokens/{jti}/revoke"), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(close_of(&mut one).await.map(|c| c.0), Some(4002));
    let j1 = token(&s, "u", Some(now), Some("j-1"));
    assert_eq!(refusal(&s, &j1).await.map(|r| r.0), Some(401));
    // A refresh to a revoked token is refused; the connection keeps its own.
    send_text(
        &mut two,
        &json!({"type": "refresh", "token": j1}).to_string(),
    )
    .await;
    let answer = next_json(&mut two).await;
    assert_eq!(
        (answer["code"].as_str(), answer["message"].as_str()),
        (Some("unauthorized"), Some("token revoked")),
        "{answer}"
    );
    for ws in [&mut two, &mut three] {
        send_text(ws, r#"{"type":"ping"}"#).await;
        assert_eq!(next_json(ws).await["type"], "pong", "still connected");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_revocation_that_makes_no_sense_is_a_bad_request_and_until_is_bounded() {
    let s = TestServer::start().await;
    let now = now_unix();
    for (path, body) in [
        ("/api/users/a/revoke", json!({"before": "yesterday"})),
        ("/api/users/a/revoke", json!({"until": -1})),
        ("/api/users/a/revoke", json!({"before": null})),
        ("/api/users/a/revoke", json!({"reason": "x"})),
        ("/api/tokens/j/revoke", json!({"before": now})),
    ] {
        let (status, answer) = revoke(&s, path, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_request")),
            "{path} {body}: {answer}"
        );
    }
    let long = "x".repeat(257);
    let (status, _) = revoke(&s, &format!("/api/tokens/{long}/revoke"), json!({})).await;
    assert_eq!(status, 400);
    let (status, _) = s
        .post_json("/api/users/a/revoke", "not-the-key", json!({}))
        .await;
    assert_eq!(status, 401);
    // The default: now, kept 30 days.
    let (status, answer) = revoke(&s, "/api/users/a/revoke", json!({})).await;
    assert_eq!(status, 200);
    let until = answer["until"].as_u64().unwrap();
    assert!(until >= now + 30 * 24 * 3600 && until <= now_unix() + 30 * 24 * 3600);
    // Kept a year at most (a time in milliseconds, say); the answer says what is kept.
    let (status, answer) = revoke(&s, "/api/users/b/revoke", json!({"until": now * 1000})).await;
    assert_eq!(status, 200);
    let until = answer["until"].as_u64().unwrap();
    assert!(
        until <= now_unix() + 366 * 24 * 3600 && until >= now + 365 * 24 * 3600,
        "{answer}"
    );
    // An `until` already past keeps nothing, but still closes who holds such a token now.
    let old = s.token_with("c", |c| c.iat = Some(now - 10));
    let (mut ws, _) = s.connect_token(&old).await;
    let (status, _) = revoke(&s, "/api/users/c/revoke", json!({"until": now - 1})).await;
    assert_eq!(status, 200);
    assert_eq!(close_of(&mut ws).await.map(|c| c.0), Some(4002));
    assert!(refusal(&s, &old).await.is_none(), "nothing was kept");
    s.shutdown().await;
}
