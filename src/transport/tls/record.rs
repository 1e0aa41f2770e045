//! The manager side's record splitter: socket bytes in, whole TLS records
//! out, each with the socket offset at which it began.
//!
//! It owns the bytes of an incomplete record and the count of socket bytes
//! seen. It never decrypts or interprets a record beyond its five-byte
//! header, and it never buffers more than one record: a header that cannot
//! start a TLS record, or that claims more than the TLS 1.3 limit
//! ([`MAX_RECORD`]), is refused at once rather than waited for.

/// TLS record header: type, version, 16-bit length.
pub const RECORD_HEADER: usize = 5;
/// Largest record a peer may send (TLS 1.3: 2^14 + 256 of ciphertext).
pub const MAX_RECORD: usize = RECORD_HEADER + (1 << 14) + 256;

/// Splits a byte stream into whole records; see the module docs.
#[derive(Debug, Default)]
pub struct RecordSplitter {
    /// Bytes of an incomplete record.
    pending: Vec<u8>,
    /// Socket bytes fed so far, complete records and `pending` alike.
    fed: u64,
}

impl RecordSplitter {
    /// Feed socket bytes: `each(record, offset)` is called for every record
    /// they complete, in order. The first error (a refused header, or one
    /// `each` returned) ends the stream.
    pub fn split<F>(&mut self, raw: &[u8], mut each: F) -> Result<(), rustls::Error>
    where
        F: FnMut(&[u8], u64) -> Result<(), rustls::Error>,
    {
        let start = self.fed - self.pending.len() as u64;
        self.fed += raw.len() as u64;
        // The incomplete record's buffer is kept and reused across reads.
        let mut data = std::mem::take(&mut self.pending);
        let joined = !data.is_empty();
        if joined {
            data.extend_from_slice(raw);
        }
        let bytes: &[u8] = if joined { &data } else { raw };
        let mut at = 0;
        while bytes.len() - at >= RECORD_HEADER {
            let len = record_len(&bytes[at..at + RECORD_HEADER])?;
            if bytes.len() - at < len {
                break;
            }
            each(&bytes[at..at + len], start + at as u64)?;
            at += len;
        }
        if joined {
            data.drain(..at);
        } else {
            data.extend_from_slice(&raw[at..]);
        }
        self.pending = data;
        Ok(())
    }
}

/// The whole length of the record `header` starts, header included.
fn record_len(header: &[u8]) -> Result<usize, rustls::Error> {
    // Refuse a header that cannot start a TLS record at once, rather than
    // waiting for the length it claims.
    let (content_type, major) = (header[0], header[1]);
    if !(20..=23).contains(&content_type) || major != 3 {
        return Err(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
    }
    let len = RECORD_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Err(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::MessageTooLarge,
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application-data record of `body` bytes, each `fill`.
    fn record(body: usize, fill: u8) -> Vec<u8> {
        let len = u16::try_from(body).expect("a record body fits 16 bits");
        let mut bytes = vec![23, 3, 3];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.resize(RECORD_HEADER + body, fill);
        bytes
    }

    /// Every record `split` hands out for `chunks`, with its offset.
    fn records(chunks: &[&[u8]]) -> Result<Vec<(Vec<u8>, u64)>, rustls::Error> {
        let mut splitter = RecordSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.split(chunk, |record, offset| {
                out.push((record.to_vec(), offset));
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn split_at_every_offset_gives_the_same_records_and_offsets() {
        let (first, second) = (record(3, 1), record(40, 2));
        let stream = [first.clone(), second.clone()].concat();
        let expected = vec![(first.clone(), 0), (second, first.len() as u64)];
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                records(&[a, b]).expect("valid records"),
                expected,
                "cut {cut}"
            );
        }
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(records(&bytewise).expect("valid records"), expected);
    }

    #[test]
    fn splitter_refuses_a_header_that_is_not_tls() {
        let err = records(&[b"GET / HTTP/1.1\r\n"]).unwrap_err();
        assert!(matches!(
            err,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        ));
    }

    #[test]
    fn splitter_refuses_a_record_over_the_limit_before_buffering_it() {
        let body = MAX_RECORD - RECORD_HEADER + 1;
        let header = &record(body, 0)[..RECORD_HEADER];
        let err = records(&[header]).unwrap_err();
        assert!(matches!(
            err,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::MessageTooLarge)
        ));
        let largest = record(MAX_RECORD - RECORD_HEADER, 0);
        assert_eq!(records(&[&largest]).expect("at the limit").len(), 1);
    }

    #[test]
    fn an_error_from_the_consumer_ends_the_split() {
        let stream = [record(1, 1), record(1, 2)].concat();
        let mut splitter = RecordSplitter::default();
        let mut seen = 0;
        let result = splitter.split(&stream, |_, _| {
            seen += 1;
            Err(rustls::Error::DecryptError)
        });
        assert!(matches!(result, Err(rustls::Error::DecryptError)));
        assert_eq!(seen, 1);
    }
}
