//! A small, allocation-light protobuf reader for the `AggregatedRecord` message.
//!
//! Why hand-written instead of `prost` decoding: the de-aggregator wants (a) user-record data
//! as zero-copy slices of the fetched record (offsets, not owned buffers), (b) key tables that
//! borrow the message (the de-aggregator makes one shared `Arc<str>` per entry when a user record
//! first takes it) rather than one `String` per table entry that is then copied again, and (c) no
//! intermediate `Vec<RecordMessage>` between the wire bytes and the output `Vec<Record>`. The
//! reader walks the body twice: [`scan`] reads the two key tables and counts the records (their
//! order in the message is free in protobuf), then [`Records`] yields each record's indices and
//! the byte range of its data. `prost` is still used for encoding and for cross-checks in tests.
//!
//! Strictness follows proto2: `required` fields must be present (`partition_key_index`, `data`,
//! `Tag.key`), the last value wins for repeated occurrences of a singular field, unknown fields
//! are skipped. Deliberate differences from protobuf-java: a known field with an unexpected wire
//! type is an error (Java would keep it as an unknown field), groups (wire types 3/4) are rejected,
//! and a varint longer than 10 bytes or overflowing 64 bits is an error. Strings that are not
//! valid UTF-8 are decoded lossily (U+FFFD), as protobuf-java does for proto2 strings.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use crate::record::Tag;

/// Why the protobuf body of an aggregated record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DecodeError {
    /// A varint, fixed-width value or length-delimited field ran past the end of the message.
    #[error("truncated protobuf message")]
    Truncated,
    /// A varint was longer than 10 bytes or did not fit in 64 bits.
    #[error("malformed varint")]
    BadVarint,
    /// Field number 0, or a wire type that is invalid (6, 7) or unsupported (groups 3, 4).
    #[error("invalid field key (field {field}, wire type {wire_type})")]
    BadKey {
        /// The field number read.
        field: u64,
        /// The wire type read.
        wire_type: u8,
    },
    /// A known field carried a wire type that does not match the schema.
    #[error("field {field} of {message} has wire type {wire_type}")]
    WrongWireType {
        /// The message being decoded.
        message: &'static str,
        /// The field number.
        field: u64,
        /// The wire type found.
        wire_type: u8,
    },
    /// A proto2 `required` field was absent.
    #[error("required field {0} is missing")]
    MissingField(&'static str),
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A cursor over one protobuf message.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The next byte, consumed.
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    #[inline]
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Fast path: one-byte varints (field keys, small indices, short lengths) dominate.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_slow()
    }

    /// A varint of at most two bytes (lengths below 16 KiB, indices below 16384), consumed;
    /// `None` for anything else, with nothing consumed.
    #[inline(always)]
    fn short_varint(&mut self) -> Option<usize> {
        let b0 = *self.buf.get(self.pos)?;
        if b0 < 0x80 {
            self.pos += 1;
            return Some(usize::from(b0));
        }
        let b1 = *self.buf.get(self.pos + 1)?;
        if b1 < 0x80 {
            self.pos += 2;
            return Some(usize::from(b0 & 0x7f) | usize::from(b1) << 7);
        }
        None
    }

    #[cold]
    #[inline(never)]
    fn varint_slow(&mut self) -> Result<u64, DecodeError> {
        let mut result = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::BadVarint);
            }
            result |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(result);
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError::BadVarint);
            }
        }
    }

    /// Reads a field key; `None` at the end of the message.
    #[inline]
    fn key(&mut self) -> Result<Option<(u64, u8)>, DecodeError> {
        if self.at_end() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        let wire_type = (key & 7) as u8;
        if field == 0 || !matches!(wire_type, VARINT | FIXED64 | LEN | FIXED32) {
            return Err(DecodeError::BadKey { field, wire_type });
        }
        Ok(Some((field, wire_type)))
    }

    /// Reads a length prefix and returns the byte range (relative to this reader's buffer) it
    /// covers, advancing past it.
    #[inline]
    fn len_delimited(&mut self) -> Result<Range<usize>, DecodeError> {
        let len = self.varint()?;
        let remaining = self.buf.len() - self.pos;
        if len > remaining as u64 {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(start..self.pos)
    }

    fn skip_bytes(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// Skips the value of an unknown field.
    fn skip(&mut self, wire_type: u8) -> Result<(), DecodeError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.skip_bytes(8),
            LEN => self.len_delimited().map(drop),
            _ => self.skip_bytes(4),
        }
    }
}

fn expect(message: &'static str, field: u64, wire_type: u8, want: u8) -> Result<(), DecodeError> {
    if wire_type == want {
        Ok(())
    } else {
        Err(DecodeError::WrongWireType {
            message,
            field,
            wire_type,
        })
    }
}

/// Decodes a proto2 string: borrowed when valid UTF-8, lossily converted otherwise.
#[inline]
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// One entry of a key table: borrowed from the message when it is valid UTF-8 (no allocation
/// until a user record takes it), owned when it had to be decoded lossily.
#[derive(Debug)]
pub(crate) struct TableKey<'a>(Cow<'a, str>);

impl std::ops::Deref for TableKey<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<Arc<str>> for TableKey<'_> {
    fn eq(&self, other: &Arc<str>) -> bool {
        *self.0 == **other
    }
}

/// The key tables of an aggregated record and the number of records it holds.
#[derive(Debug, Default)]
pub(crate) struct Tables<'a> {
    /// `partition_key_table`.
    pub(crate) partition_keys: Vec<TableKey<'a>>,
    /// `explicit_hash_key_table`.
    pub(crate) explicit_hash_keys: Vec<TableKey<'a>>,
    /// How many `records` entries the message holds.
    pub(crate) records: usize,
}

/// First pass: reads the key tables, counts the records, validates the top-level framing.
pub(crate) fn scan(body: &[u8]) -> Result<Tables<'_>, DecodeError> {
    let mut tables = Tables::default();
    let mut r = Reader::new(body);
    loop {
        // Fast path: a record (field 3, length-delimited) with a short length prefix.
        let mut peek = r;
        if peek.byte() == Some(0x1A)
            && let Some(len) = peek.short_varint()
            && len <= peek.buf.len() - peek.pos
        {
            r.pos = peek.pos + len;
            tables.records += 1;
            continue;
        }
        let Some((field, wire_type)) = r.key()? else {
            break;
        };
        match field {
            1 | 2 => {
                expect("AggregatedRecord", field, wire_type, LEN)?;
                let range = r.len_delimited()?;
                let s = TableKey(text(&body[range]));
                if field == 1 {
                    tables.partition_keys.push(s);
                } else {
                    tables.explicit_hash_keys.push(s);
                }
            }
            3 => {
                expect("AggregatedRecord", field, wire_type, LEN)?;
                r.len_delimited()?;
                tables.records += 1;
            }
            _ => r.skip(wire_type)?,
        }
    }
    Ok(tables)
}

/// One user record as read from the wire: indices into the tables and the data's byte range
/// within the protobuf body.
#[derive(Debug)]
pub(crate) struct RawRecord {
    pub(crate) partition_key_index: u64,
    pub(crate) explicit_hash_key_index: Option<u64>,
    pub(crate) data: Range<usize>,
    pub(crate) tags: Vec<Tag>,
}

/// Second pass: iterates over the `records` of an `AggregatedRecord` body.
pub(crate) struct Records<'a> {
    reader: Reader<'a>,
    failed: bool,
}

/// A user record in the encoding every known aggregator writes, read by
/// [`Records::next_canonical`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Canonical {
    pub(crate) partition_key_index: usize,
    /// `usize::MAX` when absent.
    pub(crate) explicit_hash_key_index: usize,
    /// Start of the data within the body.
    pub(crate) start: usize,
    /// End of the data within the body.
    pub(crate) end: usize,
}

impl<'a> Records<'a> {
    /// Iterates over the records of `body` (which [`scan`] accepted).
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self {
            reader: Reader::new(body),
            failed: false,
        }
    }

    /// The fast path for the encoding every known aggregator writes: when the next top-level
    /// field is a record holding exactly `partition_key_index`, optionally
    /// `explicit_hash_key_index`, then `data`, in that order, with varints of at most two bytes,
    /// it is consumed and returned. Otherwise `None` and nothing is consumed: the iterator's
    /// `next` then reads whatever comes (a table entry to skip, another encoding of a record, the
    /// end, an error), to the result it would have had anyway.
    #[inline(always)]
    pub(crate) fn next_canonical(&mut self) -> Option<Canonical> {
        if self.failed {
            return None;
        }
        let mut r = self.reader;
        if r.byte()? != 0x1A {
            return None;
        }
        let len = r.short_varint()?;
        let end = r.pos.checked_add(len).filter(|&end| end <= r.buf.len())?;
        // The record message is `r.buf[r.pos..end]`; read it in place.
        if r.byte()? != 0x08 {
            return None;
        }
        let partition_key_index = r.short_varint()?;
        let mut key = r.byte()?;
        let mut explicit_hash_key_index = usize::MAX;
        if key == 0x10 {
            explicit_hash_key_index = r.short_varint()?;
            key = r.byte()?;
        }
        if key != 0x1A {
            return None;
        }
        let data_len = r.short_varint()?;
        let start = r.pos;
        if start > end || end - start != data_len {
            return None;
        }
        self.reader.pos = end;
        Some(Canonical {
            partition_key_index,
            explicit_hash_key_index,
            start,
            end,
        })
    }

    #[inline]
    fn next_record(&mut self) -> Result<Option<RawRecord>, DecodeError> {
        let body = self.reader.buf;
        loop {
            let Some((field, wire_type)) = self.reader.key()? else {
                return Ok(None);
            };
            if field == 3 && wire_type == LEN {
                let range = self.reader.len_delimited()?;
                return parse_record(body, range).map(Some);
            }
            self.reader.skip(wire_type)?;
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<RawRecord, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Parses one `Record` message occupying `range` of `body`, field by field (any order,
/// repeated fields, unknown fields, tags); the data range returned is relative to `body`.
fn parse_record(body: &[u8], range: Range<usize>) -> Result<RawRecord, DecodeError> {
    let offset = range.start;
    let msg = &body[range];
    let mut r = Reader::new(msg);
    let mut partition_key_index = None;
    let mut explicit_hash_key_index = None;
    let mut data = None;
    let mut tags = Vec::new();
    while let Some((field, wire_type)) = r.key()? {
        match field {
            1 => {
                expect("Record", field, wire_type, VARINT)?;
                partition_key_index = Some(r.varint()?);
            }
            2 => {
                expect("Record", field, wire_type, VARINT)?;
                explicit_hash_key_index = Some(r.varint()?);
            }
            3 => {
                expect("Record", field, wire_type, LEN)?;
                let d = r.len_delimited()?;
                data = Some(d.start + offset..d.end + offset);
            }
            4 => {
                expect("Record", field, wire_type, LEN)?;
                let t = r.len_delimited()?;
                tags.push(parse_tag(&msg[t])?);
            }
            _ => r.skip(wire_type)?,
        }
    }
    Ok(RawRecord {
        partition_key_index: partition_key_index
            .ok_or(DecodeError::MissingField("Record.partition_key_index"))?,
        explicit_hash_key_index,
        data: data.ok_or(DecodeError::MissingField("Record.data"))?,
        tags,
    })
}

fn parse_tag(msg: &[u8]) -> Result<Tag, DecodeError> {
    let mut r = Reader::new(msg);
    let mut key = None;
    let mut value = None;
    while let Some((field, wire_type)) = r.key()? {
        match field {
            1 | 2 => {
                expect("Tag", field, wire_type, LEN)?;
                let range = r.len_delimited()?;
                let s = text(&msg[range]).into_owned();
                if field == 1 {
                    key = Some(s);
                } else {
                    value = Some(s);
                }
            }
            _ => r.skip(wire_type)?,
        }
    }
    Ok(Tag {
        key: key.ok_or(DecodeError::MissingField("Tag.key"))?,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_and_reject_overflow() {
        let mut r = Reader::new(&[0xAC, 0x02]);
        assert_eq!(r.varint(), Ok(300));
        let max = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
        let over = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert_eq!(Reader::new(&over).varint(), Err(DecodeError::BadVarint));
        let long = [0x80; 11];
        assert_eq!(Reader::new(&long).varint(), Err(DecodeError::BadVarint));
        assert_eq!(Reader::new(&[0x80]).varint(), Err(DecodeError::Truncated));
    }

    #[test]
    fn rejects_bad_keys_and_truncation() {
        // Field 0.
        assert!(matches!(scan(&[0x00]), Err(DecodeError::BadKey { .. })));
        // Group start (wire type 3).
        assert!(matches!(scan(&[0x0B]), Err(DecodeError::BadKey { .. })));
        // Length past the end.
        assert_eq!(
            scan(&[0x0A, 0x05, b'a']).err(),
            Some(DecodeError::Truncated)
        );
        // Partition key table entry with a varint wire type.
        assert!(matches!(
            scan(&[0x08, 0x01]),
            Err(DecodeError::WrongWireType { .. })
        ));
    }

    #[test]
    fn skips_unknown_fields() {
        // field 9 varint, field 10 fixed64, field 11 fixed32, field 12 bytes, then pk "a".
        let mut body = vec![0x48, 0x05, 0x51];
        body.extend_from_slice(&[0; 8]);
        body.push(0x5D);
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&[0x62, 0x01, 0xFF, 0x0A, 0x01, b'a']);
        let t = scan(&body).unwrap();
        assert_eq!(t.partition_keys, vec![Arc::<str>::from("a")]);
        assert_eq!(t.records, 0);
    }

    #[test]
    fn required_fields_are_enforced() {
        // Record with data but no partition_key_index.
        let body = [0x1A, 0x03, 0x1A, 0x01, b'x'];
        let mut it = Records::new(&body);
        assert_eq!(
            it.next().unwrap().err(),
            Some(DecodeError::MissingField("Record.partition_key_index"))
        );
        assert!(it.next().is_none());
        // Record with an index but no data.
        let body = [0x1A, 0x02, 0x08, 0x00];
        assert_eq!(
            Records::new(&body).next().unwrap().err(),
            Some(DecodeError::MissingField("Record.data"))
        );
        // Tag without key.
        let body = [
            0x1A, 0x09, 0x08, 0x00, 0x1A, 0x00, 0x22, 0x03, 0x12, 0x01, b'v',
        ];
        assert_eq!(
            Records::new(&body).next().unwrap().err(),
            Some(DecodeError::MissingField("Tag.key"))
        );
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let body = [0x0A, 0x02, 0xFF, b'a'];
        let t = scan(&body).unwrap();
        assert_eq!(&*t.partition_keys[0], "\u{FFFD}a");
    }
}
