//! Opaque tokens: shard iterators and `ListShards` continuation tokens.
//!
//! A token carries everything needed to resume (stream, shard, position, issue time, ...) as text
//! fields, sealed with a keyed MD5 tag so that a forged or garbled token is recognised and
//! answered with `InvalidArgument` rather than misread. The key is derived per model instance, so
//! tokens of another model are refused too. Nothing is stored per token: tokens cost no memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};

use crate::backend::ShardFilter;

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Seals and opens tokens for one model instance.
#[derive(Debug)]
pub(crate) struct TokenCodec {
    key: [u8; 16],
}

impl TokenCodec {
    /// A codec with a key unique to this model instance within the process (deterministic, so
    /// runs are repeatable).
    pub(crate) fn new() -> Self {
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let mut hasher = Md5::new();
        hasher.update(b"kcl-core model token key");
        hasher.update(instance.to_le_bytes());
        Self {
            key: hasher.finalize().into(),
        }
    }

    fn tag(&self, kind: u8, body: &str) -> String {
        let mut hasher = Md5::new();
        hasher.update(self.key);
        hasher.update([kind]);
        hasher.update(body.as_bytes());
        let digest: [u8; 16] = hasher.finalize().into();
        hex(&digest[..8])
    }

    fn seal(&self, kind: u8, fields: &[String]) -> String {
        let body = fields.join(".");
        format!("{}{}{body}", char::from(kind), self.tag(kind, &body))
    }

    fn open(&self, kind: u8, text: &str) -> Option<Vec<String>> {
        let rest = text.strip_prefix(char::from(kind))?;
        let (tag, body) = (rest.get(..16)?, rest.get(16..)?);
        if tag != self.tag(kind, body) {
            return None;
        }
        Some(body.split('.').map(str::to_owned).collect())
    }

    /// Encodes a shard iterator.
    pub(crate) fn seal_iterator(&self, claims: &IteratorClaims) -> String {
        self.seal(
            b'I',
            &[
                hex(claims.stream.as_bytes()),
                claims.stream_id.to_string(),
                claims.shard.to_string(),
                claims.position.to_string(),
                claims.issued_nanos.to_string(),
            ],
        )
    }

    /// Decodes a shard iterator; `None` if it is not one this model issued.
    pub(crate) fn open_iterator(&self, text: &str) -> Option<IteratorClaims> {
        let fields = self.open(b'I', text)?;
        let [stream, stream_id, shard, position, issued] = fields.as_slice() else {
            return None;
        };
        Some(IteratorClaims {
            stream: unhex_str(stream)?,
            stream_id: stream_id.parse().ok()?,
            shard: shard.parse().ok()?,
            position: position.parse().ok()?,
            issued_nanos: issued.parse().ok()?,
        })
    }

    /// Encodes a `ListShards` continuation token.
    pub(crate) fn seal_list(&self, claims: &ListClaims) -> String {
        let (kind, arg) = encode_filter(claims.filter.as_ref());
        self.seal(
            b'L',
            &[
                hex(claims.stream.as_bytes()),
                claims.stream_id.to_string(),
                kind.to_string(),
                arg,
                claims.after_shard.to_string(),
                claims.issued_nanos.to_string(),
            ],
        )
    }

    /// Decodes a `ListShards` continuation token; `None` if it is not one this model issued.
    pub(crate) fn open_list(&self, text: &str) -> Option<ListClaims> {
        let fields = self.open(b'L', text)?;
        let [stream, stream_id, kind, arg, after, issued] = fields.as_slice() else {
            return None;
        };
        Some(ListClaims {
            stream: unhex_str(stream)?,
            stream_id: stream_id.parse().ok()?,
            filter: decode_filter(kind.parse().ok()?, arg)?,
            after_shard: after.parse().ok()?,
            issued_nanos: issued.parse().ok()?,
        })
    }
}

/// What a shard iterator says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IteratorClaims {
    /// Stream name.
    pub(crate) stream: String,
    /// Which incarnation of the stream (a deleted and re-created stream gets a new id).
    pub(crate) stream_id: u64,
    /// Shard index within the stream.
    pub(crate) shard: usize,
    /// Absolute record position within the shard (counting trimmed records).
    pub(crate) position: u64,
    /// Issue time, nanoseconds after the model's epoch.
    pub(crate) issued_nanos: u64,
}

/// What a `ListShards` continuation token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListClaims {
    /// Stream name.
    pub(crate) stream: String,
    /// Which incarnation of the stream.
    pub(crate) stream_id: u64,
    /// The filter of the first request.
    pub(crate) filter: Option<ShardFilter>,
    /// The page continues with shards whose index is above this one.
    pub(crate) after_shard: usize,
    /// Issue time, nanoseconds after the model's epoch.
    pub(crate) issued_nanos: u64,
}

fn encode_filter(filter: Option<&ShardFilter>) -> (u8, String) {
    match filter {
        None => (0, String::new()),
        Some(ShardFilter::AfterShardId(id)) => (1, hex(id.as_bytes())),
        Some(ShardFilter::AtTrimHorizon) => (2, String::new()),
        Some(ShardFilter::FromTrimHorizon) => (3, String::new()),
        Some(ShardFilter::AtLatest) => (4, String::new()),
        Some(ShardFilter::AtTimestamp(t)) => (5, epoch_nanos(*t).to_string()),
        Some(ShardFilter::FromTimestamp(t)) => (6, epoch_nanos(*t).to_string()),
    }
}

fn decode_filter(kind: u8, arg: &str) -> Option<Option<ShardFilter>> {
    Some(Some(match kind {
        0 => return Some(None),
        1 => ShardFilter::AfterShardId(unhex_str(arg)?),
        2 => ShardFilter::AtTrimHorizon,
        3 => ShardFilter::FromTrimHorizon,
        4 => ShardFilter::AtLatest,
        5 => ShardFilter::AtTimestamp(from_epoch_nanos(arg.parse().ok()?)?),
        6 => ShardFilter::FromTimestamp(from_epoch_nanos(arg.parse().ok()?)?),
        _ => return None,
    }))
}

fn epoch_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => -i128::try_from(before.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn from_epoch_nanos(nanos: i128) -> Option<SystemTime> {
    let magnitude = u64::try_from(nanos.unsigned_abs()).ok()?;
    let d = Duration::from_nanos(magnitude);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn unhex_str(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterators_round_trip_and_reject_tampering() {
        let codec = TokenCodec::new();
        let claims = IteratorClaims {
            stream: "my.stream-1".into(),
            stream_id: 3,
            shard: 7,
            position: 12345,
            issued_nanos: 999,
        };
        let text = codec.seal_iterator(&claims);
        assert_eq!(codec.open_iterator(&text), Some(claims));
        let mut bytes = text.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'1' { b'2' } else { b'1' };
        let garbled = String::from_utf8(bytes).unwrap();
        assert_eq!(codec.open_iterator(&garbled), None);
        assert_eq!(codec.open_iterator(""), None);
        assert_eq!(codec.open_iterator("I"), None);
        assert_eq!(codec.open_iterator("Iéééééééééééééééééé"), None);
        assert_eq!(TokenCodec::new().open_list("L0123"), None);
    }

    #[test]
    fn list_tokens_round_trip_with_every_filter() {
        let codec = TokenCodec::new();
        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        for filter in [
            None,
            Some(ShardFilter::AfterShardId("shardId-000000000001".into())),
            Some(ShardFilter::AtTrimHorizon),
            Some(ShardFilter::FromTrimHorizon),
            Some(ShardFilter::AtLatest),
            Some(ShardFilter::AtTimestamp(SystemTime::now())),
            Some(ShardFilter::FromTimestamp(before_epoch)),
        ] {
            let claims = ListClaims {
                stream: "s".into(),
                stream_id: 1,
                filter,
                after_shard: 4,
                issued_nanos: 17,
            };
            let text = codec.seal_list(&claims);
            assert_eq!(codec.open_list(&text), Some(claims));
            assert_eq!(codec.open_iterator(&text), None);
        }
    }
}
