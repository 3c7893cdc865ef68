//! Secret masking: every occurrence of a secret env value in step output, reasons and results
//! becomes `***`. Output arrives in chunks, so a secret split across two chunks must still be
//! found: the streaming [`StreamMask`] holds back a tail that could be the start of a secret
//! until the next chunk (or the end) decides.

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// The secrets of one run, longest first (so a secret containing another is masked whole).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<Vec<u8>>,
    /// `starts[b]`: some secret begins with byte `b` (a fast skip for everything else).
    starts: Vec<bool>,
}

impl Secrets {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Secrets {
        let mut values: Vec<Vec<u8>> = values.into_iter().filter(|v| !v.is_empty()).map(|v| v.as_bytes().to_vec()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        let mut starts = vec![false; 256];
        for v in &values {
            starts[usize::from(v[0])] = true;
        }
        Secrets { values, starts }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `s` with every secret replaced by `***`; a secret JSON-escaped inside `s` (a stored
    /// result document) is masked too.
    pub fn mask_str(&self, s: &str) -> String {
        if self.is_empty() {
            return s.to_owned();
        }
        let mut out = String::from_utf8_lossy(&self.mask_all(s.as_bytes())).into_owned();
        for v in &self.values {
            if let Ok(text) = std::str::from_utf8(v) {
                let escaped = serde_json::to_string(text).unwrap_or_default();
                let inner = &escaped[1..escaped.len().saturating_sub(1).max(1)];
                if inner != text && !inner.is_empty() {
                    out = out.replace(inner, MASK);
                }
            }
        }
        out
    }

    fn mask_all(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        let done = self.scan(data, &mut out, true);
        debug_assert_eq!(done, data.len());
        out
    }

    /// Masks `data` into `out`. Unless `at_end`, stops at the first position where what is left
    /// is a proper prefix of a secret; returns how far it got.
    fn scan(&self, data: &[u8], out: &mut Vec<u8>, at_end: bool) -> usize {
        let mut i = 0;
        let mut plain_from = 0;
        'outer: while i < data.len() {
            if !self.starts[usize::from(data[i])] {
                i += 1;
                continue;
            }
            let rest = &data[i..];
            for v in &self.values {
                if rest.starts_with(v) {
                    out.extend_from_slice(&data[plain_from..i]);
                    out.extend_from_slice(MASK.as_bytes());
                    i += v.len();
                    plain_from = i;
                    continue 'outer;
                }
            }
            if !at_end && self.values.iter().any(|v| v.len() > rest.len() && v.starts_with(rest)) {
                out.extend_from_slice(&data[plain_from..i]);
                return i;
            }
            i += 1;
        }
        out.extend_from_slice(&data[plain_from..]);
        data.len()
    }
}

/// Masks one stream chunk by chunk.
#[derive(Debug)]
pub struct StreamMask {
    secrets: Secrets,
    held: Vec<u8>,
}

impl StreamMask {
    pub fn new(secrets: Secrets) -> StreamMask {
        StreamMask { secrets, held: Vec::new() }
    }

    /// The masked bytes that are final now; a possible start of a secret is held back.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut out = Vec::with_capacity(buf.len());
        let done = self.secrets.scan(&buf, &mut out, false);
        self.held = buf[done..].to_vec();
        out
    }

    /// Whatever was held back: at the end of the stream it can no longer become a secret.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_whole_secrets_only() {
        let s = Secrets::new(["hunter2", "hunter2-long", ""]);
        assert_eq!(s.mask_str("a hunter2 b hunter2-long c hunter"), "a *** b *** c hunter");
        assert_eq!(s.mask_str(r#"{"output":"x\"hunter2"}"#), r#"{"output":"x\"***"}"#);
        let q = Secrets::new(["a\"b"]);
        assert_eq!(q.mask_str(r#"{"v":"a\"b"}"#), r#"{"v":"***"}"#, "JSON-escaped too");
        assert_eq!(Secrets::new([]).mask_str("hunter2"), "hunter2");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// However the output is cut into chunks, the streamed result equals masking it whole,
        /// and no secret survives.
        #[test]
        fn chunked_equals_whole(
            pieces in prop::collection::vec(prop::sample::select(vec!["s3", "cr", "et", "s3cret", "x", "\n", "s", "s3c"]), 0..40),
            cuts in prop::collection::vec(0usize..64, 0..10),
        ) {
            let text: String = pieces.concat();
            let secrets = Secrets::new(["s3cret"]);
            let whole = secrets.mask_all(text.as_bytes());
            let mut m = StreamMask::new(secrets);
            let mut got = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort();
            let mut at = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                got.extend(m.push(&text.as_bytes()[at..c]));
                at = c;
            }
            got.extend(m.finish());
            prop_assert_eq!(&got, &whole);
            prop_assert!(!String::from_utf8_lossy(&got).contains("s3cret"));
        }
    }
}
