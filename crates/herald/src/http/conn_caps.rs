//! Caps on open HTTP (non-WebSocket) connections, per node and per client IP (DESIGN
//! §12), checked at accept before a byte is parsed. A connection holds its slot until
//! its HTTP task ends: when it closes, or when it becomes a WebSocket (those are
//! counted by the registry's own per-user / per-IP caps instead).
//!
//! The per-IP cap is not applied to trusted proxies: behind a load balancer every
//! connection comes from it (the client address is only known from the request head).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Refusal;

pub struct HttpConnCaps {
    counts: Mutex<Counts>,
    per_node: AtomicUsize,
    per_ip: AtomicUsize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A held slot; dropping it gives the slot back.
pub struct HttpSlot {
    caps: Arc<HttpConnCaps>,
    ip: Option<IpAddr>,
}

impl HttpConnCaps {
    pub fn new(per_node: usize, per_ip: usize) -> HttpConnCaps {
        HttpConnCaps {
            counts: Mutex::new(Counts::default()),
            per_node: AtomicUsize::new(per_node),
            per_ip: AtomicUsize::new(per_ip),
        }
    }

    /// New caps for connections accepted from now on (a config reload).
    pub fn set_caps(&self, per_node: usize, per_ip: usize) {
        self.per_node.store(per_node, Relaxed);
        self.per_ip.store(per_ip, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip` (`None`: exempt from the per-IP cap).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<HttpSlot, Refusal> {
        let mut c = self.lock();
        if c.total >= self.per_node.load(Relaxed) {
            return Err(Refusal::HttpConnCap);
        }
        if let Some(ip) = ip {
            let n = c.per_ip.entry(ip).or_insert(0);
            if *n >= self.per_ip.load(Relaxed) {
                return Err(Refusal::HttpConnCap);
            }
            *n += 1;
        }
        c.total += 1;
        Ok(HttpSlot {
            caps: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        let mut c = self.caps.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_node_and_ip_and_slots_come_back() {
        let caps = Arc::new(HttpConnCaps::new(3, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = caps.admit(Some(a)).unwrap();
        let _s2 = caps.admit(Some(a)).unwrap();
        assert!(caps.admit(Some(a)).is_err(), "per-IP cap");
        let _s3 = caps.admit(Some(b)).unwrap();
        assert!(caps.admit(None).is_err(), "per-node cap, even for a proxy");
        drop(s1);
        let again = caps.admit(Some(a));
        assert!(again.is_ok(), "the dropped slot came back");
        assert_eq!(caps.open(), 3);
        drop(again);
        assert_eq!(caps.open(), 2);
    }
}
