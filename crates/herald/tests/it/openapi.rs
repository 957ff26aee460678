//! The OpenAPI document (`GET /api/openapi.json`) against the code: it lists exactly
//! the router's routes, and every documented operation, sent a good request and a bad
//! one, answers a status the document lists — with a body that fits the documented
//! schema. A route added without its documentation, or a documented answer the code no
//! longer gives, fails here.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::*;

async fn document(s: &TestServer) -> Value {
    let res = reqwest::get(format!("http://{}/api/openapi.json", s.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    res.json().await.unwrap()
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                ops.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_of_the_router() {
    let s = TestServer::start().await;
    let doc = document(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], herald::VERSION);
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let routed: BTreeSet<(String, String)> = herald::http::router::endpoints(&s.node().app)
        .iter()
        .map(|e| (e.method.to_string(), e.path.to_owned()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes not documented: {missing:?}; documented routes that do not exist: {extra:?}"
    );
    for (method, path, op) in operations(&doc) {
        assert!(
            op["operationId"].is_string(),
            "{method} {path}: operationId"
        );
        assert!(op["responses"].is_object(), "{method} {path}: responses");
        assert!(
            op["security"].is_array() || doc["security"].is_array(),
            "{method} {path}: security"
        );
    }
    s.shutdown().await;
}

/// Resolves a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{r} resolves")),
            )
        }
        None => schema,
    }
}

fn type_fits(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Why `v` does not fit `schema` (the subset of JSON Schema the document uses: type,
/// enum, const, required, properties, additionalProperties, items, oneOf/anyOf/allOf,
/// $ref), or None when it fits.
fn misfit(doc: &Value, schema: &Value, v: &Value, at: &str) -> Option<String> {
    let schema = resolve(doc, schema);
    if let Some(any) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        if any.iter().all(|s| misfit(doc, s, v, at).is_some()) {
            return Some(format!("{at}: fits none of the alternatives: {v}"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        if let Some(why) = all.iter().find_map(|s| misfit(doc, s, v, at)) {
            return Some(why);
        }
    }
    match &schema["type"] {
        Value::String(t) if !type_fits(t, v) => return Some(format!("{at}: not {t}: {v}")),
        Value::Array(ts) if !ts.iter().any(|t| type_fits(t.as_str().unwrap(), v)) => {
            return Some(format!("{at}: none of {ts:?}: {v}"))
        }
        _ => {}
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(v) {
            return Some(format!("{at}: {v} is not one of {options:?}"));
        }
    }
    if !schema["const"].is_null() && &schema["const"] != v {
        return Some(format!("{at}: {v} is not {}", schema["const"]));
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(key.as_str().unwrap()) {
                return Some(format!("{at}: missing required `{key}` in {v}"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, child) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => {
                    if let Some(why) = misfit(doc, s, child, &format!("{at}.{k}")) {
                        return Some(why);
                    }
                }
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => {
                        return Some(format!("{at}: `{k}` is not documented"));
                    }
                    s @ Value::Object(_) => {
                        if let Some(why) = misfit(doc, s, child, &format!("{at}.{k}")) {
                            return Some(why);
                        }
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), v.as_array()) {
        for (i, item) in list.iter().enumerate() {
            if let Some(why) = misfit(doc, items, item, &format!("{at}[{i}]")) {
                return Some(why);
            }
        }
    }
    None
}

/// Sends one request and checks the documented answer: the status is listed, and a
/// JSON body fits the schema listed for it.
async fn check(doc: &Value, op: &Value, what: &str, req: reqwest::RequestBuilder) -> u16 {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let media = res
        .headers()
        .get("content-type")
        .map(|v| {
            v.to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    let documented = &op["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{what}: answered {status}, which is not documented ({text})"
    );
    let documented = resolve(doc, documented);
    if media == "application/json" {
        let schema = &documented["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{what}: {status} has no JSON schema");
        let body: Value = serde_json::from_str(&text).unwrap();
        if let Some(why) = misfit(doc, schema, &body, "body") {
            panic!("{what}: {status}: {why}");
        }
    } else if media.is_empty() && text.is_empty() {
        assert!(
            documented["content"].is_null(),
            "{what}: {status} has no body, but a documented one"
        );
    } else {
        assert!(
            documented["content"][media.as_str()].is_object(),
            "{what}: {status} answered {media}, not documented"
        );
    }
    status
}

/// Whether the operation takes credentials, and whether it also answers without them
/// (an empty requirement, `{}`: `/metrics` with `metrics.public`).
fn security(doc: &Value, op: &Value) -> (bool, bool) {
    let security = if op["security"].is_array() {
        &op["security"]
    } else {
        &doc["security"]
    };
    let list = security.as_array().cloned().unwrap_or_default();
    let empty = |r: &Value| r.as_object().is_some_and(|o| o.is_empty());
    (list.iter().any(|r| !empty(r)), list.iter().any(empty))
}

#[tokio::test]
async fn every_operation_answers_what_the_document_says_to_a_good_and_a_bad_request() {
    let s = TestServer::start_with(|c| {
        c.namespaces.insert(
            "lobby".into(),
            herald::config::NamespaceConfig {
                presence: true,
                ..Default::default()
            },
        );
    })
    .await;
    let doc = document(&s).await;
    // Redirects are answers of their own, not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let key = s.api_key.clone();
    let user = s.token("alice");
    // What the good requests name: a live connection, an announcement to acknowledge.
    let (_victim, hello) = s.connect("victim").await;
    let conn_id = hello["conn_id"].as_str().unwrap().to_owned();
    let (status, created) = s
        .post_json("/api/broadcasts", &key, json!({"message": "hello"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let broadcast = created["id"].as_str().unwrap().to_owned();

    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let filled = path
            .replace(
                "/api/connections/{id}",
                &format!("/api/connections/{conn_id}"),
            )
            .replace(
                "/api/broadcasts/{id}",
                &format!("/api/broadcasts/{broadcast}"),
            )
            .replace("{id}", "alice")
            .replace("{jti}", "some-token-id")
            .replace("{name}", "lobby:hall");
        assert!(
            !filled.contains('{'),
            "{what}: a path parameter the test cannot fill"
        );
        let url = format!("http://{}{filled}", s.addr);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = &op["requestBody"];

        if path == "/ws" {
            // The good request is a real upgrade (101); the bad one has no token.
            let (ws, _) = tokio_tungstenite::connect_async(s.ws_url(&user))
                .await
                .expect("the documented upgrade works");
            drop(ws);
            assert!(op["responses"]["101"].is_object(), "{what}: 101 documented");
            let bad = http
                .get(&url)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
            assert_eq!(check(&doc, &op, &what, bad).await, 401, "{what}: no token");
            checked += 1;
            continue;
        }

        if path == "/sse" {
            // The good request opens the stream (200, read no further); the bad one has
            // no token.
            let good = http
                .get(format!("{url}?channels=news&token={user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(good.status().as_u16(), 200, "{what}");
            assert_eq!(good.headers()["content-type"], "text/event-stream");
            assert!(op["responses"]["200"]["content"]["text/event-stream"].is_object());
            drop(good);
            assert_eq!(
                check(&doc, &op, &what, http.get(&url)).await,
                401,
                "{what}: no token"
            );
            checked += 1;
            continue;
        }

        // A good request: credentials (a user's token where only a user can act), the
        // documented example body.
        let credential = if path.ends_with("/ack") { &user } else { &key };
        let (secured, optional) = security(&doc, &op);
        let mut good = http.request(method.clone(), &url);
        if secured {
            good = good.bearer_auth(credential);
        }
        if body.is_object() {
            let example = &resolve(&doc, body)["content"]["application/json"]["example"];
            assert!(
                !example.is_null(),
                "{what}: the request body has an example"
            );
            good = good.json(example);
        }
        let status = check(&doc, &op, &format!("{what} (good)"), good).await;
        assert!(
            (200..300).contains(&status) || status == 308,
            "{what}: a good request answered {status}"
        );

        // Bad requests: no credentials, and a body that is not JSON.
        if secured && !optional {
            let bad = http.request(method.clone(), &url);
            let status = check(&doc, &op, &format!("{what} (no credentials)"), bad).await;
            assert_eq!(status, 401, "{what}");
        }
        if body.is_object() {
            let bad = http
                .request(method.clone(), &url)
                .bearer_auth(credential)
                .header("content-type", "application/json")
                .body("{");
            let status = check(&doc, &op, &format!("{what} (broken body)"), bad).await;
            assert_eq!(status, 400, "{what}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "checked {checked} operations");
    s.shutdown().await;
}
