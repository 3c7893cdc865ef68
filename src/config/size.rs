//! Byte sizes as `fleet.toml` writes them: `512KiB`, `64MiB`, `2GiB`, `100B`.

/// The largest size anything accepts.
pub const MAX: u64 = 1 << 40;

/// Parses `<number><unit>` with unit `B`, `KiB`, `MiB` or `GiB`, at most [`MAX`].
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{s}` is not a size like \"64MiB\""));
    }
    let scale: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => return Err(format!("`{s}`: a size needs a unit: B, KiB, MiB or GiB")),
        other => return Err(format!("`{s}`: unknown unit `{other}`; expected B, KiB, MiB or GiB")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}`: number too large"))?;
    match n.checked_mul(scale) {
        Some(0) => Err(format!("`{s}`: must be larger than zero")),
        Some(v) if v <= MAX => Ok(v),
        _ => Err(format!("`{s}`: larger than the limit of 1024GiB")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("512KiB"), Ok(512 << 10));
        assert_eq!(parse("100B"), Ok(100));
        assert!(parse("64").unwrap_err().contains("needs a unit"));
        assert!(parse("64MB").unwrap_err().contains("unknown unit `MB`"));
        assert!(parse("0B").is_err());
        assert!(parse("99999999999GiB").unwrap_err().contains("limit"));
        assert!(parse("MiB").is_err());
    }
}
