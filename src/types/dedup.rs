//! Dedup keys: what identifies an event for de-duplication, as the store keeps it.

use sha2::{Digest, Sha256};

/// The stored form of one dedup identity (a body hash or an item id, as text): the
/// first 16 bytes of the SHA-256 of that text. 128 bits keep collisions out of reach
/// for any spool, and a key costs a quarter of the hex text it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey([u8; 16]);

impl DedupKey {
    /// The key of an identity's text (`body:<sha256 hex>`, `wa.msg:<id>`, ...).
    pub fn of(identity: &str) -> DedupKey {
        let digest = Sha256::digest(identity.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupKey(key)
    }

    /// A key as stored (16 bytes).
    pub fn from_bytes(bytes: [u8; 16]) -> DedupKey {
        DedupKey(bytes)
    }

    /// The 16 bytes, as stored.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl DedupKeys {
    /// Every key: the body's, then its items' (if any).
    pub fn all(&self) -> impl Iterator<Item = &DedupKey> {
        std::iter::once(&self.body).chain(self.items.iter().flatten())
    }

    /// The keys within a dedup group: routes of one group share their memory, others
    /// do not. The flags' route (group `default`) keeps the bare keys, as releases
    /// before routes stored them.
    pub fn in_group(self, group: &str) -> DedupKeys {
        if group == "default" {
            return self;
        }
        let scoped = |key: DedupKey| {
            let mut text = format!("group:{group}:");
            text.extend(key.0.iter().map(|b| format!("{b:02x}")));
            DedupKey::of(&text)
        };
        DedupKeys {
            body: scoped(self.body),
            items: self
                .items
                .map(|items| items.into_iter().map(scoped).collect()),
        }
    }
}

/// Every dedup key of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKeys {
    /// The key of the raw body (byte-identical retries).
    pub body: DedupKey,
    /// The keys of its items, present only when the body has at least one item and
    /// every item carries an id. The notification is a retry when all were seen.
    pub items: Option<Vec<DedupKey>>,
}
