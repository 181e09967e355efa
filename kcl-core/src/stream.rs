//! Stream identity: which stream a lease, a shard or a processor belongs to.
//!
//! Owns [`StreamIdentifier`] (a stream named by its name, its ARN, or Java KCL's serialized
//! multi-stream identifier `account:stream:creationEpoch`) and [`LeaseNaming`], the one place
//! lease keys are made from shard ids and read back:
//!
//! - a single-stream application keeps plain keys, the shard id itself (`shardId-000000000000`);
//! - a multi-stream application keys every lease `account:stream:creationEpoch:shardId`, exactly
//!   as Java KCL 2.3+ does, so one lease table holds the leases of many streams, and a stream
//!   deleted and created again under the same name (a new creation epoch) never finds the old
//!   stream's leases.
//!
//! Shard ids never contain `:`, stream names never do either (Kinesis allows `[a-zA-Z0-9_.-]`),
//! and account ids are digits, so a multi-stream key splits unambiguously.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::StreamDescription;

/// Why a stream identifier or a multi-stream lease key could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamIdError {
    /// Empty input.
    #[error("empty stream identifier")]
    Empty,
    /// The stream name is not a valid Kinesis stream name (1-128 of `a-zA-Z0-9_.-`).
    #[error("invalid stream name {0:?}: 1 to 128 of a-z, A-Z, 0-9, '_', '.', '-'")]
    InvalidName(String),
    /// An ARN that is not `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
    #[error("invalid stream ARN {0:?}: expected arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME")]
    InvalidArn(String),
    /// A serialized identifier that is not `account:stream:creationEpoch`.
    #[error("invalid serialized stream identifier {0:?}: expected ACCOUNT:STREAM:CREATION_EPOCH")]
    InvalidSerialized(String),
    /// An account id that is not 12 digits.
    #[error("invalid account id {0:?}: expected 12 digits")]
    InvalidAccount(String),
    /// A creation epoch that is not a number of seconds.
    #[error("invalid creation epoch {0:?}: expected seconds since 1970 as a decimal number")]
    InvalidEpoch(String),
    /// A lease key that is not `account:stream:creationEpoch:shardId`.
    #[error(
        "invalid multi-stream lease key {0:?}: expected ACCOUNT:STREAM:CREATION_EPOCH:SHARD_ID"
    )]
    InvalidLeaseKey(String),
    /// A description of another stream than the identifier names (another name or account, or
    /// the same name recreated: another creation epoch).
    #[error("stream {given} does not match the described stream {described}: the {what} differs")]
    Mismatch {
        /// The identifier as given.
        given: String,
        /// The described stream's ARN.
        described: String,
        /// Which part differs.
        what: &'static str,
    },
    /// The identifier lacks the account or the creation epoch a multi-stream lease key needs.
    #[error(
        "stream {0}: account and creation epoch unknown (resolve it with describe_stream first)"
    )]
    Unresolved(String),
}

/// A stream, named by its name, its ARN, or Java KCL's serialized identifier.
///
/// Parse one with [`str::parse`] / [`StreamIdentifier::parse`]:
///
/// - `orders` (a name: the account and creation epoch are learned from `DescribeStreamSummary`),
/// - `arn:aws:kinesis:eu-west-1:123456789012:stream/orders` (account and region known),
/// - `123456789012:orders:1700000000` (Java's `account:stream:creationEpoch`: fully resolved).
///
/// Two identifiers are equal (`==`) when all their parts are, including the region and partition
/// an ARN or a resolution carries, which Java's serialized form and lease keys do not: to ask
/// whether two identifiers name the same stream incarnation, compare [`Self::serialize`]d forms
/// (account, name, creation epoch). A stream recreated under the same name has another creation
/// epoch and so another identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIdentifier {
    name: String,
    account_id: Option<String>,
    region: Option<String>,
    partition: Option<String>,
    creation_epoch: Option<u64>,
}

impl StreamIdentifier {
    /// A stream known by its name only.
    pub fn from_name(name: impl Into<String>) -> Result<Self, StreamIdError> {
        let name = name.into();
        validate_name(&name)?;
        Ok(Self {
            name,
            account_id: None,
            region: None,
            partition: None,
            creation_epoch: None,
        })
    }

    /// A fully resolved stream: account, name and creation epoch (seconds since 1970).
    pub fn multi_stream(
        account_id: impl Into<String>,
        name: impl Into<String>,
        creation_epoch: u64,
    ) -> Result<Self, StreamIdError> {
        let account_id = account_id.into();
        validate_account(&account_id)?;
        let mut id = Self::from_name(name)?;
        id.account_id = Some(account_id);
        id.creation_epoch = Some(creation_epoch);
        Ok(id)
    }

    /// Reads a name, an ARN or a serialized `account:stream:creationEpoch`.
    pub fn parse(text: &str) -> Result<Self, StreamIdError> {
        if text.is_empty() {
            return Err(StreamIdError::Empty);
        }
        if text.starts_with("arn:") {
            return Self::parse_arn(text);
        }
        if text.contains(':') {
            return Self::parse_serialized(text);
        }
        Self::from_name(text)
    }

    /// Reads `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
    pub fn parse_arn(arn: &str) -> Result<Self, StreamIdError> {
        let bad = || StreamIdError::InvalidArn(arn.to_owned());
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [scheme, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        if scheme != "arn" || partition.is_empty() || service != "kinesis" || region.is_empty() {
            return Err(bad());
        }
        let name = resource.strip_prefix("stream/").ok_or_else(bad)?;
        if name.contains('/') {
            // A consumer ARN (`stream/NAME/consumer/...`) names a consumer, not a stream.
            return Err(bad());
        }
        validate_account(account)?;
        let mut id = Self::from_name(name)?;
        id.account_id = Some(account.to_owned());
        id.region = Some(region.to_owned());
        id.partition = Some(partition.to_owned());
        Ok(id)
    }

    /// Reads Java KCL's serialized identifier `account:stream:creationEpoch`.
    pub fn parse_serialized(text: &str) -> Result<Self, StreamIdError> {
        let parts: Vec<&str> = text.split(':').collect();
        let [account, name, epoch] = parts[..] else {
            return Err(StreamIdError::InvalidSerialized(text.to_owned()));
        };
        Self::multi_stream(account, name, parse_epoch(epoch)?)
    }

    /// The stream name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account, when known.
    pub fn account_id(&self) -> Option<&str> {
        self.account_id.as_deref()
    }

    /// The region, when given by an ARN.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// When the stream was created (seconds since 1970), when known.
    pub fn creation_epoch(&self) -> Option<u64> {
        self.creation_epoch
    }

    /// The stream ARN, when the region and account are known.
    pub fn arn(&self) -> Option<String> {
        let partition = self.partition.as_deref().unwrap_or("aws");
        Some(format!(
            "arn:{partition}:kinesis:{}:{}:stream/{}",
            self.region.as_deref()?,
            self.account_id.as_deref()?,
            self.name
        ))
    }

    /// Whether the account and creation epoch are known (a multi-stream lease key can be made).
    pub fn is_resolved(&self) -> bool {
        self.account_id.is_some() && self.creation_epoch.is_some()
    }

    /// Java's serialized form `account:stream:creationEpoch` (the `streamName` attribute of a
    /// multi-stream lease, and the prefix of its key).
    pub fn serialize(&self) -> Result<String, StreamIdError> {
        match (&self.account_id, self.creation_epoch) {
            (Some(account), Some(epoch)) => Ok(format!("{account}:{}:{epoch}", self.name)),
            _ => Err(StreamIdError::Unresolved(
                self.arn().unwrap_or_else(|| self.name.clone()),
            )),
        }
    }

    /// Completes the identifier from the stream's `DescribeStreamSummary`: the account and
    /// region from its ARN, the creation epoch from its creation time. Parts already known are
    /// checked: a description of another stream (or of the same name recreated, when the epoch
    /// was given) is an error naming both.
    pub fn resolve(&self, description: &StreamDescription) -> Result<Self, StreamIdError> {
        let described = Self::parse_arn(&description.arn)?;
        let epoch = epoch_seconds(description.created_at);
        let mismatch = |what: &'static str| StreamIdError::Mismatch {
            given: self.to_string(),
            described: description.arn.clone(),
            what,
        };
        if described.name != self.name {
            return Err(mismatch("name"));
        }
        if self
            .account_id
            .as_ref()
            .is_some_and(|a| Some(a) != described.account_id.as_ref())
        {
            return Err(mismatch("account"));
        }
        if self.creation_epoch.is_some_and(|e| e != epoch) {
            return Err(mismatch("creation epoch"));
        }
        let mut id = described;
        id.creation_epoch = Some(epoch);
        Ok(id)
    }

    /// The multi-stream lease key of `shard_id`: `account:stream:creationEpoch:shardId`.
    pub fn lease_key(&self, shard_id: &str) -> Result<String, StreamIdError> {
        Ok(format!("{}:{shard_id}", self.serialize()?))
    }

    /// Splits a multi-stream lease key into its stream and shard id.
    pub fn parse_lease_key(key: &str) -> Result<(Self, &str), StreamIdError> {
        let bad = || StreamIdError::InvalidLeaseKey(key.to_owned());
        let (stream, shard) = key.rsplit_once(':').ok_or_else(bad)?;
        if shard.is_empty() {
            return Err(bad());
        }
        let id = Self::parse_serialized(stream).map_err(|_| bad())?;
        Ok((id, shard))
    }
}

impl fmt::Display for StreamIdentifier {
    /// The serialized form when resolved, else the ARN when known, else the name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(account), Some(epoch)) = (&self.account_id, self.creation_epoch) {
            return write!(f, "{account}:{}:{epoch}", self.name);
        }
        match self.arn() {
            Some(arn) => f.write_str(&arn),
            None => f.write_str(&self.name),
        }
    }
}

impl FromStr for StreamIdentifier {
    type Err = StreamIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// How the leases of one stream are keyed in the lease table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseNaming {
    /// Single-stream application: the key is the shard id.
    Single,
    /// Multi-stream application: the key is `<serialized stream>:<shardId>`; holds the
    /// serialized stream identifier.
    Multi(String),
}

impl LeaseNaming {
    /// The naming of a resolved stream in a multi-stream application.
    pub fn multi(stream: &StreamIdentifier) -> Result<Self, StreamIdError> {
        Ok(Self::Multi(stream.serialize()?))
    }

    /// The naming of the stream the lease `key` belongs to: multi-stream when the key is
    /// `account:stream:creationEpoch:shardId`, else single-stream. With it, a lease's parents and
    /// children (plain shard ids, as Java stores them) are found under their own keys.
    pub fn of_key(key: &str) -> Self {
        match StreamIdentifier::parse_lease_key(key) {
            Ok((stream, _)) if !key.starts_with(crate::lease::WORKER_KEY_PREFIX) => {
                stream.serialize().map_or(Self::Single, Self::Multi)
            }
            _ => Self::Single,
        }
    }

    /// The lease key of `shard_id`.
    pub fn lease_key(&self, shard_id: &str) -> String {
        match self {
            Self::Single => shard_id.to_owned(),
            Self::Multi(stream) => format!("{stream}:{shard_id}"),
        }
    }

    /// The shard id of `key` when the key is one of this stream's leases, else `None` (a
    /// heartbeat row, or another stream's lease).
    pub fn shard_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        if key.starts_with(crate::lease::WORKER_KEY_PREFIX) {
            return None;
        }
        match self {
            Self::Single => (!key.contains(':')).then_some(key),
            Self::Multi(stream) => key
                .strip_prefix(stream.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .filter(|shard| !shard.is_empty() && !shard.contains(':')),
        }
    }

    /// The serialized stream identifier, in a multi-stream application.
    pub fn stream(&self) -> Option<&str> {
        match self {
            Self::Single => None,
            Self::Multi(stream) => Some(stream),
        }
    }
}

/// Seconds since 1970 of `at` (0 before it).
pub(crate) fn epoch_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn validate_name(name: &str) -> Result<(), StreamIdError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StreamIdError::InvalidName(name.to_owned()))
    }
}

fn validate_account(account: &str) -> Result<(), StreamIdError> {
    if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(StreamIdError::InvalidAccount(account.to_owned()))
    }
}

fn parse_epoch(epoch: &str) -> Result<u64, StreamIdError> {
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StreamIdError::InvalidEpoch(epoch.to_owned()));
    }
    epoch
        .parse()
        .map_err(|_| StreamIdError::InvalidEpoch(epoch.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StreamStatus;
    use std::time::Duration;

    #[test]
    fn a_name_parses_and_displays_as_itself() {
        let id: StreamIdentifier = "orders-1.eu_west".parse().unwrap();
        assert_eq!(id.name(), "orders-1.eu_west");
        assert_eq!(id.account_id(), None);
        assert!(!id.is_resolved());
        assert_eq!(id.to_string(), "orders-1.eu_west");
        assert!(matches!(id.serialize(), Err(StreamIdError::Unresolved(_))));
    }

    #[test]
    fn an_arn_gives_account_and_region() {
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
        let id = StreamIdentifier::parse(arn).unwrap();
        assert_eq!(id.name(), "orders");
        assert_eq!(id.account_id(), Some("123456789012"));
        assert_eq!(id.region(), Some("eu-west-1"));
        assert_eq!(id.arn().as_deref(), Some(arn));
        assert_eq!(id.to_string(), arn);
        let cn = "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/orders";
        assert_eq!(
            StreamIdentifier::parse(cn).unwrap().arn().as_deref(),
            Some(cn)
        );
    }

    #[test]
    fn a_serialized_identifier_round_trips() {
        let id = StreamIdentifier::parse("123456789012:orders:1700000000").unwrap();
        assert_eq!(id.account_id(), Some("123456789012"));
        assert_eq!(id.creation_epoch(), Some(1_700_000_000));
        assert!(id.is_resolved());
        assert_eq!(id.serialize().unwrap(), "123456789012:orders:1700000000");
        assert_eq!(id.to_string(), "123456789012:orders:1700000000");
        assert_eq!(
            id,
            StreamIdentifier::multi_stream("123456789012", "orders", 1_700_000_000).unwrap()
        );
    }

    #[test]
    fn bad_input_gets_an_error_naming_what_is_wrong() {
        use StreamIdError::*;
        type Check = fn(&StreamIdError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| *e == Empty),
            ("no spaces", |e| matches!(e, InvalidName(_))),
            (&"x".repeat(129), |e| matches!(e, InvalidName(_))),
            ("arn:aws:s3:eu-west-1:123456789012:stream/a", |e| {
                matches!(e, InvalidArn(_))
            }),
            ("arn:aws:kinesis:eu-west-1:123456789012:table/a", |e| {
                matches!(e, InvalidArn(_))
            }),
            (
                "arn:aws:kinesis:eu-west-1:123456789012:stream/a/consumer/c:1",
                |e| matches!(e, InvalidArn(_)),
            ),
            ("arn:aws:kinesis:eu-west-1:12345:stream/a", |e| {
                matches!(e, InvalidAccount(_))
            }),
            ("123456789012:orders", |e| matches!(e, InvalidSerialized(_))),
            ("123456789012:orders:1:2", |e| {
                matches!(e, InvalidSerialized(_))
            }),
            ("1234:orders:1700000000", |e| matches!(e, InvalidAccount(_))),
            ("123456789012:orders:soon", |e| matches!(e, InvalidEpoch(_))),
            ("123456789012:orders:-1", |e| matches!(e, InvalidEpoch(_))),
            ("123456789012:or ders:1", |e| matches!(e, InvalidName(_))),
        ];
        for (text, check) in cases {
            let error = StreamIdentifier::parse(text).unwrap_err();
            assert!(check(&error), "{text:?}: {error:?}");
        }
        assert!(
            StreamIdError::InvalidEpoch("soon".into())
                .to_string()
                .contains("soon")
        );
    }

    #[test]
    fn multi_stream_lease_keys_as_java_writes_them() {
        let id = StreamIdentifier::parse("123456789012:orders:1700000000").unwrap();
        let key = id.lease_key("shardId-000000000007").unwrap();
        assert_eq!(key, "123456789012:orders:1700000000:shardId-000000000007");
        let (back, shard) = StreamIdentifier::parse_lease_key(&key).unwrap();
        assert_eq!(back, id);
        assert_eq!(shard, "shardId-000000000007");
        for bad in [
            "shardId-000000000000",
            "123456789012:orders:1700000000:",
            "123456789012:orders:shardId-000000000000",
            "kcl-rs/worker/w1",
        ] {
            assert!(
                matches!(
                    StreamIdentifier::parse_lease_key(bad),
                    Err(StreamIdError::InvalidLeaseKey(_))
                ),
                "{bad}"
            );
        }
        let unresolved = StreamIdentifier::from_name("orders").unwrap();
        assert!(matches!(
            unresolved.lease_key("shardId-0"),
            Err(StreamIdError::Unresolved(_))
        ));
    }

    #[test]
    fn naming_keeps_each_streams_leases_apart() {
        let single = LeaseNaming::Single;
        assert_eq!(
            single.lease_key("shardId-000000000001"),
            "shardId-000000000001"
        );
        assert_eq!(
            single.shard_id("shardId-000000000001"),
            Some("shardId-000000000001")
        );
        assert_eq!(single.shard_id("kcl-rs/worker/w"), None);
        assert_eq!(
            single.shard_id("123456789012:a:1:shardId-000000000001"),
            None
        );

        let a = LeaseNaming::multi(&StreamIdentifier::parse("123456789012:a:1").unwrap()).unwrap();
        // The same name recreated: another epoch, another stream.
        let a2 = LeaseNaming::multi(&StreamIdentifier::parse("123456789012:a:2").unwrap()).unwrap();
        let key = a.lease_key("shardId-000000000001");
        assert_eq!(key, "123456789012:a:1:shardId-000000000001");
        assert_eq!(a.shard_id(&key), Some("shardId-000000000001"));
        assert_eq!(a2.shard_id(&key), None);
        assert_eq!(a.shard_id("shardId-000000000001"), None);
        // A prefix of the epoch is not the stream.
        assert_eq!(a.shard_id("123456789012:a:10:shardId-000000000001"), None);
        assert_eq!(a.stream(), Some("123456789012:a:1"));
        assert_eq!(LeaseNaming::of_key(&key), a);
        assert_eq!(LeaseNaming::of_key("shardId-000000000001"), single);
        assert_eq!(
            LeaseNaming::of_key("kcl-rs/worker/123456789012:a:1:w"),
            single
        );
    }

    #[test]
    fn resolving_a_name_from_its_description() {
        let description = StreamDescription {
            name: "orders".into(),
            arn: "arn:aws:kinesis:us-east-1:000000000000:stream/orders".into(),
            status: StreamStatus::Active,
            retention: Duration::from_secs(86_400),
            open_shard_count: 1,
            created_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_900),
        };
        let id = StreamIdentifier::from_name("orders")
            .unwrap()
            .resolve(&description)
            .unwrap();
        assert_eq!(id.serialize().unwrap(), "000000000000:orders:1700000000");
        assert_eq!(id.region(), Some("us-east-1"));
        // The same name, recreated since the identifier was written down.
        let old = StreamIdentifier::parse("000000000000:orders:1600000000").unwrap();
        assert!(matches!(
            old.resolve(&description),
            Err(StreamIdError::Mismatch {
                what: "creation epoch",
                ..
            })
        ));
        let other = StreamIdentifier::from_name("payments").unwrap();
        assert!(other.resolve(&description).is_err());
    }
}
