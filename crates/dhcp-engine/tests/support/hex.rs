//! The one loader of the hex frame fixtures in `tests/data/`, shared by the
//! codec and capture tests, the bench and the fuzz seed generator (each
//! includes this file with `#[path]`; it needs nothing but std).

/// Hex fixture: `#` starts a comment, everything else is hex byte pairs.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").bytes())
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex digit"))
        .collect()
}
