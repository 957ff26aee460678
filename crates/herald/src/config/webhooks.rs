//! `[webhooks]`: presence events POSTed to another system (DESIGN §13), signed, retried,
//! through a bounded queue. Off while `url` is empty.

use serde::Deserialize;

use super::string_list;
use crate::hub::presence_events::EventKind;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// `http(s)://…` that receives each event as a POST; empty = no webhooks.
    pub url: String,
    /// Signs each body: `X-Herald-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
    /// Required with `url`, at least 16 characters.
    pub secret: String,
    /// Which events are sent: `user_online`, `user_offline`, `connection_open`,
    /// `connection_close`.
    #[serde(deserialize_with = "string_list")]
    pub events: Vec<String>,
    /// One attempt's deadline.
    pub timeout_ms: u64,
    /// Attempts per event before it is given up (and counted failed).
    pub max_attempts: u32,
    /// Events waiting to be sent; beyond it new events are dropped (and counted).
    pub queue: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret: String::new(),
            events: vec!["user_online".into(), "user_offline".into()],
            timeout_ms: 5_000,
            max_attempts: 6,
            queue: 10_000,
        }
    }
}

impl WebhooksConfig {
    /// The configured event kinds (unknown names are refused by `validate`).
    pub fn kinds(&self) -> Vec<EventKind> {
        self.events
            .iter()
            .filter_map(|e| EventKind::parse(e))
            .collect()
    }

    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        for e in &self.events {
            if EventKind::parse(e).is_none() {
                errs.push(format!(
                    "webhooks.events: `{e}` is not an event (user_online, user_offline, connection_open, connection_close)"
                ));
            }
        }
        if self.url.is_empty() {
            return;
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => errs.push(format!(
                "webhooks.url: expected http(s)://host/path (or empty for no webhooks), got `{}`",
                self.url
            )),
        }
        if self.secret.chars().count() < 16 {
            errs.push(
                "webhooks.secret: required with webhooks.url, at least 16 characters (the receiver checks X-Herald-Signature with it)"
                    .into(),
            );
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            errs.push(format!(
                "webhooks.timeout_ms: 1..=60000, got {}",
                self.timeout_ms
            ));
        }
        if !(1..=20).contains(&self.max_attempts) {
            errs.push(format!(
                "webhooks.max_attempts: 1..=20, got {}",
                self.max_attempts
            ));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            errs.push(format!("webhooks.queue: 1..=1000000, got {}", self.queue));
        }
    }
}
