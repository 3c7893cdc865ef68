//! Reading what the `paddock` CLI prints for people: `key   value` fields (`runs show`) and
//! table rows split into cells.

/// The value of field `key` in the output (a line `key  value`, the key padded with spaces).
pub fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).filter(|rest| rest.starts_with("  ")).map(str::trim))
        .unwrap_or_else(|| panic!("no field `{key}` in:\n{out}"))
}

/// The whitespace-separated cells of the first line whose cells begin with `first`.
pub fn row<'a>(out: &'a str, first: &[&str]) -> Vec<&'a str> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.starts_with(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{out}"))
}
