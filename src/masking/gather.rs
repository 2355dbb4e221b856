//! A body gathered for masking: its frames joined into one buffer as they arrive, each
//! checked for ASCII (the common case of API bodies) while it is still in cache. A body
//! known to be ASCII is valid UTF-8, so masking skips its own pass over the text (at
//! 1 MB that pass read the whole body back from memory).

use bytes::{Bytes, BytesMut};

/// Whether every byte of `data` is below 0x80: a wide OR over 64 bytes a step
/// (vectorised), a fraction of `from_utf8`'s time.
pub(crate) fn is_ascii(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        let acc = c.chunks_exact(8).fold(0u64, |a, w| {
            a | u64::from_le_bytes(w.try_into().expect("8 bytes"))
        });
        if acc & 0x8080_8080_8080_8080 != 0 {
            return false;
        }
    }
    chunks.remainder().is_ascii()
}

/// The frames of one body, joined.
#[derive(Default)]
pub struct Gatherer {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
    len: usize,
    ascii: bool,
    /// The expected length (Content-Length), to size the buffer once.
    expect: usize,
}

impl Gatherer {
    /// `expect`: the declared length, when there is one (never trusted beyond sizing).
    pub fn new(expect: Option<u64>) -> Gatherer {
        Gatherer {
            ascii: true,
            expect: expect.map_or(0, |n| usize::try_from(n).unwrap_or(0)),
            ..Gatherer::default()
        }
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds the next frame. A body of one frame is not copied at all; later frames are
    /// copied as they arrive, while still in cache (collecting all first, then joining
    /// them, read a large body back from memory).
    pub fn push(&mut self, data: Bytes) {
        self.ascii = self.ascii && is_ascii(&data);
        self.len += data.len();
        if let Some(buf) = self.joined.as_mut() {
            buf.extend_from_slice(&data);
        } else if let Some(f) = self.first.take() {
            let mut buf = BytesMut::with_capacity(self.expect.max(self.len));
            buf.extend_from_slice(&f);
            buf.extend_from_slice(&data);
            self.joined = Some(buf);
        } else {
            self.first = Some(data);
        }
    }

    pub fn finish(self) -> Gathered {
        let bytes = match self.joined {
            Some(buf) => buf.freeze(),
            None => self.first.unwrap_or_default(),
        };
        Gathered {
            bytes,
            ascii: self.ascii,
        }
    }
}

/// A whole body, and whether it is all ASCII (only ever set by a check of its bytes).
pub struct Gathered {
    bytes: Bytes,
    ascii: bool,
}

impl Gathered {
    /// A body that arrived some other way (decompressed): checked here.
    pub fn new(bytes: Bytes) -> Gathered {
        let ascii = is_ascii(&bytes);
        Gathered { bytes, ascii }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The body as text when it is all ASCII (then valid UTF-8 without another look).
    pub(crate) fn ascii_text(&self) -> Option<&str> {
        if self.ascii {
            // SAFETY: `ascii` is only true when every byte was checked to be below 0x80
            // (`Gatherer::push` or `Gathered::new`), and ASCII is valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(&self.bytes) })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_known_exactly_whatever_the_frames() {
        let text = "{\"a\":\"Zoë\",\"b\":[1,2,3]}".repeat(40);
        let bytes = text.as_bytes();
        // The one non-ASCII character at every position relative to frame edges.
        for split in [1, 7, 63, 64, 65, 200, bytes.len()] {
            let mut g = Gatherer::new(Some(bytes.len() as u64));
            for part in bytes.chunks(split) {
                g.push(Bytes::copy_from_slice(part));
            }
            assert_eq!(g.len(), bytes.len());
            let whole = g.finish();
            assert_eq!(whole.bytes().as_ref(), bytes);
            assert!(whole.ascii_text().is_none(), "split {split}");
        }
        let plain = "{\"a\":\"Zoe\"}".repeat(50);
        for split in [1, 64, 100, plain.len()] {
            let mut g = Gatherer::new(None);
            for part in plain.as_bytes().chunks(split) {
                g.push(Bytes::copy_from_slice(part));
            }
            assert_eq!(
                g.finish().ascii_text(),
                Some(plain.as_str()),
                "split {split}"
            );
        }
        // One high byte anywhere in a 64-byte step or the remainder.
        for at in [0, 8, 63, 64, 127, 130] {
            let mut b = vec![b'a'; 131];
            b[at] = 0xC3;
            assert!(!is_ascii(&b), "{at}");
            assert!(Gathered::new(Bytes::from(b)).ascii_text().is_none());
        }
        assert!(Gatherer::new(None).finish().ascii_text() == Some(""));
    }
}
