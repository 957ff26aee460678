//! A client's text frame as the session sees it: `protocol::client::decode`, then the
//! channel check every channel-carrying command goes through.
//!
//! Checked: no panic; the bare-`ping` shortcut fires only for `ping`/`"ping"`; an
//! error always says something; a channel that passes `validate_channel` is 1..=256
//! bytes of `[A-Za-z0-9_.:@-]`.
#![no_main]

use herald::protocol::channel::validate_channel;
use herald::protocol::client::{decode, ClientMessage, Inbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Inbound::TextPing) => {
            let t = data.trim_ascii();
            assert!(t == b"ping" || t == b"\"ping\"", "TextPing from {data:?}");
        }
        Ok(Inbound::Message(m)) => match m {
            ClientMessage::Subscribe { channel, .. }
            | ClientMessage::Unsubscribe { channel, .. } => check_channel(&channel),
            ClientMessage::Ping
            | ClientMessage::Refresh { .. }
            | ClientMessage::AcknowledgeBroadcast { .. }
            | ClientMessage::GetActiveBroadcast => {}
        },
        Ok(Inbound::Publish(p)) => {
            if let Some(channel) = &p.channel {
                check_channel(channel);
            }
        }
        Err(e) => assert!(!e.message.is_empty(), "empty decode error for {data:?}"),
    }
});

fn check_channel(channel: &str) {
    if validate_channel(channel).is_ok() {
        assert!(!channel.is_empty() && channel.len() <= 256, "{channel:?}");
        assert!(
            channel
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b)),
            "{channel:?} validated"
        );
    }
}
