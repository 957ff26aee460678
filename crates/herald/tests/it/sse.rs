//! `GET /sse` (DESIGN §13): the frames of `/ws` as Server-Sent Events, read here by a
//! plain HTTP client that parses the stream as the EventSource spec says (the browser
//! test reads it with a real EventSource).

use std::collections::VecDeque;
use std::time::Duration;

use herald::config::NamespaceConfig;
use serde_json::{json, Value};

use crate::support::*;

/// One event as an EventSource sees it.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open event stream and what has been read of it.
struct Stream {
    res: reqwest::Response,
    buf: String,
    events: VecDeque<Event>,
    comments: usize,
}

impl Stream {
    async fn open(s: &TestServer, query: &str, headers: &[(&str, &str)]) -> Stream {
        let res = Self::request(s, query, headers).await;
        assert_eq!(res.status().as_u16(), 200, "{:?}", res.headers());
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        Stream {
            res,
            buf: String::new(),
            events: VecDeque::new(),
            comments: 0,
        }
    }

    async fn request(s: &TestServer, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = s.http.get(format!("http://{}/sse?{query}", s.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    /// The next event (not a comment), or None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout(WAIT, self.res.chunk())
                .await
                .expect("an event in time")
                .expect("stream readable")?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                self.parse(&block);
            }
        }
    }

    /// The EventSource rules: `field: value` lines, `data` lines joined with `\n`, lines
    /// starting with `:` are comments.
    fn parse(&mut self, block: &str) {
        let (mut event, mut id, mut data) = (String::from("message"), None, Vec::new());
        let mut any = false;
        for line in block.lines() {
            if line.is_empty() {
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            any = true;
            match field {
                "event" => event = value.to_owned(),
                "id" => id = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                other => panic!("unexpected field {other}"),
            }
        }
        if any {
            let data = serde_json::from_str(&data.join("\n")).unwrap();
            self.events.push_back(Event { event, id, data });
        }
    }

    /// The next event named `name`, skipping others.
    async fn next_named(&mut self, name: &str) -> Event {
        loop {
            let e = self.next().await.expect("stream open");
            if e.event == name {
                return e;
            }
        }
    }
}

fn query(s: &TestServer, user: &str, rest: &str) -> String {
    format!("token={}&{rest}", s.token(user))
}

#[tokio::test]
async fn an_event_stream_carries_the_ws_frames_and_recovers_with_last_event_id() {
    let s = TestServer::start().await;
    let mut stream = Stream::open(&s, &query(&s, "alice", "channels=news,sync:alice"), &[]).await;
    let hello = stream.next().await.unwrap();
    assert_eq!(hello.event, "connected");
    assert_eq!(hello.data["user_id"], "alice");
    let news = stream.next().await.unwrap();
    assert_eq!(
        (news.event.as_str(), &news.data["channel"]),
        ("subscribed", &json!("news"))
    );
    let epoch = news.data["epoch"].as_str().unwrap().to_owned();
    assert_eq!(
        stream.next_named("subscribed").await.data["channel"],
        "sync:alice"
    );
    for n in 1..=3 {
        let (status, _) = s
            .publish(json!({"channel": "news", "data": {"n": n, "text": "line\nbreak"}}))
            .await;
        assert_eq!(status, 200);
    }
    let mut last = None;
    for n in 1..=3 {
        let e = stream.next_named("pub").await;
        assert_eq!(e.data["data"]["n"], n);
        assert_eq!(e.data["data"]["text"], "line\nbreak");
        assert_eq!(e.id.as_deref(), Some(format!("{epoch}:{n}").as_str()));
        last = e.id;
    }
    assert_eq!(
        s.stats().await["node"]["connections"],
        1,
        "counted like any connection"
    );
    drop(stream);
    let gone = poll_until(WAIT, || async {
        s.stats().await["node"]["connections"] == 0
    });
    assert!(gone.await, "unregistered when the client goes away");
    // Missed while away: the EventSource's reconnect sends the last id it saw.
    for n in 4..=5 {
        s.publish(json!({"channel": "news", "data": {"n": n}}))
            .await;
    }
    let last = last.unwrap();
    let mut again = Stream::open(
        &s,
        &query(&s, "alice", "channels=news"),
        &[("Last-Event-ID", &last)],
    )
    .await;
    let sub = again.next_named("subscribed").await;
    assert_eq!(sub.data["recovered"], true, "{:?}", sub.data);
    for n in 4..=5 {
        assert_eq!(again.next_named("pub").await.data["data"]["n"], n);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn several_channels_recover_with_since_by_place_and_refused_ones_are_error_events() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "live".into(),
            NamespaceConfig {
                history_size: 0,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let mut first = Stream::open(&s, &query(&s, "bob", "channels=a,b"), &[]).await;
    let ea = first.next_named("subscribed").await.data["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let eb = first.next_named("subscribed").await.data["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(first);
    for ch in ["a", "b", "a", "b"] {
        s.publish(json!({"channel": ch, "data": ch})).await;
    }
    // a from 1 (so 2 follows), b from the start; sync:alice is not bob's.
    let q = query(
        &s,
        "bob",
        &format!("channels=a,b,sync:alice&since={ea}:1,{eb}:0"),
    );
    let mut again = Stream::open(&s, &q, &[]).await;
    let mut got = Vec::new();
    let mut refused = None;
    while got.len() < 3 || refused.is_none() {
        let e = again.next().await.unwrap();
        match e.event.as_str() {
            "pub" => got.push((e.data["channel"].clone(), e.data["offset"].clone())),
            "error" => refused = Some(e.data),
            "subscribed" => assert_eq!(e.data["recovered"], true, "{:?}", e.data),
            _ => {}
        }
    }
    assert_eq!(
        got,
        vec![
            (json!("a"), json!(2)),
            (json!("b"), json!(1)),
            (json!("b"), json!(2))
        ]
    );
    let refused = refused.unwrap();
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(
        refused["channel"], "sync:alice",
        "a query channel's refusal names it"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn what_ws_refuses_sse_refuses_with_the_same_json_errors() {
    let s = TestServer::start_with(|c| c.ws.max_subscriptions = 2).await;
    /// A query, extra headers, the status and the error code expected.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("channels=news".into(), vec![], 401, "unauthorized"),
        (
            query(&s, "u", "channels=news"),
            vec![("Origin", "https://evil.example")],
            403,
            "forbidden",
        ),
        (
            query(&s, "u", "channels=news&since=nonsense"),
            vec![],
            400,
            "bad_request",
        ),
        (
            query(&s, "u", "channels=a&since=e:1,e:2"),
            vec![],
            400,
            "bad_request",
        ),
        (
            query(&s, "u", "channels=a,b,c"),
            vec![],
            429,
            "rate_limited",
        ),
        (
            "token=not-a-jwt&channels=news".into(),
            vec![],
            401,
            "unauthorized",
        ),
    ];
    for (q, headers, status, code) in cases {
        let res = Stream::request(&s, &q, &headers).await;
        assert_eq!(res.status().as_u16(), status, "{q}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], code, "{q}: {body}");
    }
    let refused = &s.stats().await["refused"];
    assert!(
        refused["bad_origin"].as_u64() >= Some(1) && refused["bad_token"].as_u64() >= Some(2),
        "{refused}"
    );
    // The token in the cookie works as on /ws.
    let cookie = format!("herald_token={}", s.token("c"));
    let mut byc = Stream::open(&s, "channels=news", &[("Cookie", &cookie)]).await;
    assert_eq!(byc.next().await.unwrap().data["user_id"], "c");
    s.shutdown().await;
}

#[tokio::test]
async fn heartbeats_are_comments_and_a_close_is_an_event_that_ends_the_stream() {
    let s = TestServer::start_with(|c| {
        c.ws.heartbeat_s = 1;
        c.ws.idle_timeout_s = 2;
    })
    .await;
    let token = s.token_with("dora", |c| c.channels = vec!["news".into()]);
    let mut stream = Stream::open(&s, &format!("token={token}"), &[]).await;
    assert_eq!(stream.next().await.unwrap().event, "connected");
    assert_eq!(
        stream.next_named("subscribed").await.data["channel"],
        "news",
        "the token's channels"
    );
    // Longer than the idle timeout: the stream being written keeps it alive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let (status, _) = s.publish(json!({"channel": "news", "data": "tick"})).await;
        assert_eq!(status, 200);
        assert_eq!(stream.next_named("pub").await.data["data"], "tick");
    }
    assert!(
        stream.comments >= 2,
        "a ping comment each second: {}",
        stream.comments
    );
    let key = s.api_key.clone();
    let (status, _) = s
        .post_json(
            "/api/users/dora/disconnect",
            &key,
            json!({"code": 4004, "reason": "bye"}),
        )
        .await;
    assert_eq!(status, 200);
    let close = stream.next_named("close").await;
    assert_eq!(close.data, json!({"code": 4004, "reason": "bye"}));
    assert!(stream.next().await.is_none(), "the stream ends");
    s.shutdown().await;
}

#[tokio::test]
async fn a_client_on_sse_publishes_with_its_token_as_its_websocket_would() {
    use herald::config::namespaces::PublishRule;
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "chat".into(),
            NamespaceConfig {
                publish: PublishRule::Any,
                ..NamespaceConfig::default()
            },
        );
        c.ws.rate_per_s = 1;
        c.ws.rate_burst = 8;
    })
    .await;
    let alice = s.token("alice");
    let mut stream = Stream::open(&s, &format!("token={alice}&channels=chat:room"), &[]).await;
    let own = stream.next_named("connected").await.data["conn_id"]
        .as_str()
        .unwrap()
        .to_owned();
    stream.next_named("subscribed").await;
    let (mut bob, hello) = s.connect("bob").await;
    let bobs = hello["conn_id"].as_str().unwrap().to_owned();
    subscribe_to(&mut bob, "chat:room").await;
    // Alice's own connection is left out of her publication; Bob gets it.
    let (status, body) = s
        .post_json(
            "/api/publish",
            &alice,
            json!({"channel": "chat:room", "data": "from alice", "exclude_conn": own}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 1, "{body}");
    assert_eq!(next_pub(&mut bob).await["data"], "from alice");
    // She may not silence Bob: his connection is not hers, so the exclusion holds no one.
    let (status, body) = s
        .post_json(
            "/api/publish",
            &alice,
            json!({"channel": "chat:room", "data": "to all", "exclude_conn": bobs}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_pub(&mut bob).await["data"], "to all");
    let e = stream.next_named("pub").await;
    assert_eq!(
        e.data["data"], "to all",
        "her own echo was left out, not this"
    );
    assert_eq!(e.id.as_deref().map(|id| id.ends_with(":2")), Some(true));
    // What a client may not do over WebSocket, it may not do over HTTP either.
    for (body, status, code) in [
        (json!({"user": "bob", "data": 1}), 403, "forbidden"),
        (json!({"all": true, "data": 1}), 403, "forbidden"),
        (
            json!({"channel": "chat:room", "data": 1, "exclude_user": "bob"}),
            403,
            "forbidden",
        ),
        (json!({"channel": "news", "data": 1}), 403, "forbidden"),
        (json!({"channel": "nowhere:x", "data": 1}), 404, "not_found"),
        (
            json!({"channel": "chat:room", "data": 1, "idempotency_key": "k".repeat(65)}),
            400,
            "bad_request",
        ),
    ] {
        let (got, answer) = s.post_json("/api/publish", &alice, body.clone()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{body} → {answer}"
        );
    }
    // Held to a connection's inbound rate (burst 8, then 1 a second): the burst runs out.
    let mut accepted = 2;
    let mut limited = None;
    for n in 0..20 {
        let (status, body) = s
            .post_json(
                "/api/publish",
                &alice,
                json!({"channel": "chat:room", "data": n}),
            )
            .await;
        if status != 200 {
            limited = Some((status, body));
            break;
        }
        accepted += 1;
    }
    let (status, body) = limited.expect("refused once the burst is spent");
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert_eq!(
        s.post_json(
            "/api/publish",
            &s.token("carol"),
            json!({"channel": "chat:room", "data": 4})
        )
        .await
        .0,
        200,
        "another user's own rate"
    );
    assert_publications_counted(&s, "client", accepted + 1).await;
    // A revoked token publishes nothing (and an admin's neither).
    let now = herald::auth::jwt::now_unix();
    let (status, _) = s
        .post_json(
            "/api/users/carol/revoke",
            &s.api_key.clone(),
            json!({"before": now + 1}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post_json(
            "/api/publish",
            &s.token("carol"),
            json!({"channel": "chat:room", "data": 5}),
        )
        .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("token revoked")),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_page_on_a_listed_origin_may_publish_and_ack_over_http_others_get_no_cors() {
    use herald::config::namespaces::PublishRule;
    let s = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".into()];
        c.namespaces.insert(
            "chat".into(),
            NamespaceConfig {
                publish: PublishRule::Any,
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let url = |path: &str| format!("http://{}{path}", s.addr);
    let preflight = |origin: &'static str, path: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    for path in ["/api/publish", "/api/broadcasts/1/ack"] {
        let res = preflight("https://app.example", path).await.unwrap();
        assert_eq!(res.status().as_u16(), 204, "{path}");
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
        assert!(h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"));
    }
    // Another origin, or a backend's endpoint: no preflight answer, no CORS headers.
    for (origin, path) in [
        ("https://evil.example", "/api/publish"),
        ("https://app.example", "/api/publish/batch"),
        ("https://app.example", "/api/stats"),
    ] {
        let res = preflight(origin, path).await.unwrap();
        assert_eq!(res.status().as_u16(), 405, "{origin} {path}");
        assert!(res.headers().get("access-control-allow-origin").is_none());
    }
    let publish = |origin: &'static str| {
        s.http
            .post(url("/api/publish"))
            .header("Origin", origin)
            .bearer_auth(s.token("alice"))
            .json(&json!({"channel": "chat:room", "data": 1}))
            .send()
    };
    let res = publish("https://app.example").await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let res = publish("https://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    s.shutdown().await;
}
