//! Human durations as `fleet.toml` writes them: `90s`, `30m`, `2h`, `1d`, `1h30m`.

use std::time::Duration;

/// Parses `1h30m`-style durations. A bare number is refused: units are always written.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; expected e.g. \"30s\", \"30m\", \"2h\", \"1d\"".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("`{s}`: unknown unit `{c}`; expected s, m, h or d")),
        };
        if digits.is_empty() {
            return Err(format!("`{s}`: unit `{c}` has no number before it"));
        }
        let n: u64 = digits.parse().map_err(|_| format!("`{s}`: number too large"))?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("`{s}`: too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("`{s}`: number without a unit; write e.g. \"{digits}s\" or \"{digits}m\""));
    }
    if total == 0 {
        return Err(format!("`{s}`: must be longer than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// The inverse of [`parse`], for summaries.
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{}", s / len, unit));
            s %= len;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86_400));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(parse("30").unwrap_err().contains("without a unit"));
        assert!(parse("5y").unwrap_err().contains("unknown unit `y`"));
        assert!(parse("h").unwrap_err().contains("no number"));
        assert!(parse("0s").unwrap_err().contains("longer than zero"));
        assert!(parse("").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for s in ["30s", "30m", "2h", "1h30m", "1d2h"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
