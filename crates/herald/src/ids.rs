//! The ids the wire contract names, as types: a user id and a connection id are both
//! strings on the wire, and easy to swap in code where both are `Arc<str>`. A leaf:
//! everything may use it, it uses nothing of herald's.
//!
//! Both are cheap to clone (a shared `Arc<str>`), compare and hash as their text (so a
//! map keyed by them is looked up with a `&str`), and read as `&str` where text is
//! needed.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<Arc<str>> for $name {
            fn from(s: Arc<str>) -> Self {
                $name(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

string_id! {
    /// A user: a token's `sub`, or `anon-<n>` for an anonymous connection. All of a
    /// user's connections, on every node, share it.
    UserId
}

string_id! {
    /// One connection, as clients and the API see it: `<node tag>-<n>`, unique across
    /// nodes and restarts (the tag is random per process).
    ConnId
}

impl ConnId {
    /// The `n`-th connection of the node tagged `tag`.
    pub fn new(tag: &str, n: u64) -> ConnId {
        ConnId(Arc::from(format!("{tag}-{n}")))
    }

    /// The `n` of `id` if it names a connection of the node tagged `tag`.
    pub fn local_number(id: &str, tag: &str) -> Option<u64> {
        id.strip_prefix(tag)?.strip_prefix('-')?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_connection_id_names_its_node() {
        let id = ConnId::new("a1b2c3", 17);
        assert_eq!(id, "a1b2c3-17");
        assert_eq!(ConnId::local_number(&id, "a1b2c3"), Some(17));
        assert_eq!(ConnId::local_number(&id, "ffffff"), None);
        assert_eq!(ConnId::local_number("a1b2c3-", "a1b2c3"), None);
        assert_eq!(ConnId::local_number("a1b2c3x17", "a1b2c3"), None);
    }

    #[test]
    fn ids_are_looked_up_by_their_text() {
        let mut m: HashMap<UserId, u32> = HashMap::new();
        m.insert(UserId::from("alice"), 1);
        assert_eq!(m.get("alice"), Some(&1));
        assert_eq!(format!("{}", UserId::from("bob")), "bob");
        assert_eq!(
            serde_json::to_string(&UserId::from("c\"d")).unwrap(),
            r#""c\"d""#
        );
    }
}
