//! `POST /api/publish/batch` (DESIGN §7): publications applied in order, one result
//! each in order, a bad entry answered on its own line without stopping the others.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn a_batch_is_applied_in_order_and_answered_one_result_each() {
    // The reader reads after the batch: its queue holds all of it.
    let s = TestServer::start_with(|c| c.ws.queue_messages = 1024).await;
    let (mut ws, _) = s.connect("reader").await;
    subscribe_to(&mut ws, "news").await;
    let mut publications: Vec<Value> = (0..300)
        .map(|i| json!({"channel": "news", "data": {"i": i}}))
        .collect();
    // Bad entries in the middle: each gets its own error, the rest goes on.
    publications.insert(100, json!({"channel": "nowhere:x", "data": 1}));
    publications.insert(200, json!({"user": "a", "channel": "news", "data": 1}));
    publications.insert(250, json!("not an object"));
    publications.push(json!({"user": "reader", "data": "direct"}));
    let (status, body) = s
        .post_json(
            "/api/publish/batch",
            &s.api_key.clone(),
            json!({"publications": publications}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 304);
    assert_eq!(results[100]["error"], "not_found", "{}", results[100]);
    assert_eq!(results[200]["error"], "bad_request", "{}", results[200]);
    assert_eq!(results[250]["error"], "bad_request", "{}", results[250]);
    let offsets: Vec<u64> = results
        .iter()
        .filter_map(|r| r["offset"].as_u64())
        .collect();
    assert_eq!(
        offsets,
        (1..=300).collect::<Vec<u64>>(),
        "in order, one offset each"
    );
    assert_eq!(results[303], json!({"queued": 1}));
    for i in 0..300 {
        let m = next_pub(&mut ws).await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i + 1), Some(i))
        );
    }
    assert_eq!(next_pub(&mut ws).await["data"], "direct");
    assert_publications_counted(&s, "batch", 301).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_is_not_one_is_refused_whole() {
    let s = TestServer::start().await;
    let key = s.api_key.clone();
    let one = json!({"all": true, "data": 1});
    for bad in [
        json!({"publications": []}),
        json!({"publications": vec![one.clone(); 1001]}),
        json!({"publications": one.clone()}),
        json!({"publications": [one.clone()], "extra": 1}),
        json!([one.clone()]),
    ] {
        let (status, body) = s.post_json("/api/publish/batch", &key, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    let (status, _) = s
        .post_json(
            "/api/publish/batch",
            &s.token("user"),
            json!({"publications": [one.clone()]}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .post_json(
            "/api/publish/batch",
            &key,
            json!({"publications": vec![one; 1000]}),
        )
        .await;
    assert_eq!(
        (status, body["results"].as_array().map(Vec::len)),
        (200, Some(1000))
    );
    assert_eq!(s.stats().await["publications"], 1000);
    s.shutdown().await;
}
