//! The sidecar file format: what an entry's commit point records (body generation and
//! length, the compact key for the eviction manager, and pingora's serialised CacheMeta).

use pingora::cache::key::CompactCacheKey;

const MAGIC: &[u8; 4] = b"PTC1";

/// The sidecar: what the commit point records.
pub(super) struct Sidecar {
    pub generation: u64,
    pub body_len: u64,
    pub key: CompactCacheKey,
    pub meta: (Vec<u8>, Vec<u8>),
}

impl Sidecar {
    pub fn encode(&self) -> Vec<u8> {
        let tag = self.key.user_tag.as_bytes();
        let mut out = Vec::with_capacity(64 + tag.len() + self.meta.0.len() + self.meta.1.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.key.primary);
        match &self.key.variance {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(v.as_ref());
            }
            None => out.push(0),
        }
        for part in [tag, &self.meta.0, &self.meta.1] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Option<Sidecar> {
        let mut r = Reader { buf };
        if r.take(4)? != MAGIC {
            return None;
        }
        let generation = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let body_len = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let primary = r.take(16)?.try_into().ok()?;
        let variance = match r.take(1)?[0] {
            0 => None,
            1 => Some(Box::new(r.take(16)?.try_into().ok()?)),
            _ => return None,
        };
        let tag = std::str::from_utf8(r.chunk()?).ok()?.into();
        let meta = (r.chunk()?.to_vec(), r.chunk()?.to_vec());
        if !r.buf.is_empty() {
            return None;
        }
        Some(Sidecar {
            generation,
            body_len,
            key: CompactCacheKey {
                primary,
                variance,
                user_tag: tag,
            },
            meta,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn chunk(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}
