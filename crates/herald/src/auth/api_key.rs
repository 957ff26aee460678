//! API keys for backends, compared in constant time.

use subtle::ConstantTimeEq;

pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> ApiKeys {
        ApiKeys {
            keys: keys.into_iter().map(String::into_bytes).collect(),
        }
    }

    pub fn accepts(&self, candidate: &str) -> bool {
        let c = candidate.as_bytes();
        // Check every key so the time taken does not reveal which one matched.
        self.keys
            .iter()
            .fold(false, |hit, k| hit | bool::from(k.as_slice().ct_eq(c)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_configured_keys() {
        let k = super::ApiKeys::new(["a-long-key-0123456789".to_owned()]);
        assert!(k.accepts("a-long-key-0123456789"));
        assert!(!k.accepts("a-long-key-012345678"));
        assert!(!k.accepts(""));
    }
}
