//! Strings made safe to print on a terminal. What a service publishes
//! (status.json) is written by a role's uid and partly comes from the
//! network: printed raw, an escape sequence would drive the operator's
//! terminal and a newline would forge a line.

/// Whether a terminal shows `c` as itself: not a control character (C0,
/// DEL, C1 such as CSI), not a format character (bidi overrides...), not a
/// line or paragraph separator. `escape_debug` knows Unicode's printable set.
fn shows_as_itself(c: char) -> bool {
    c == ' ' || (!c.is_control() && c.escape_debug().next() != Some('\\')) || matches!(c, '\\' | '"' | '\'')
}

/// `s` with everything that is not printable written as `\u{..}`, so a
/// published string can neither drive the terminal nor forge a line. The
/// backslash is escaped too, so that an escape in the output is always
/// one this function wrote.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c != '\\' && shows_as_itself(c) {
                c.to_string()
            } else {
                c.escape_unicode().to_string()
            }
        })
        .collect()
}

/// JSON text with every non-printable character as a JSON `\uXXXX` escape
/// (UTF-16, surrogate pairs beyond the BMP). Outside strings JSON text is
/// printable ASCII, so the result is the same JSON value. Newlines are
/// kept: pretty-printed JSON has them only between tokens.
pub fn json_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || shows_as_itself(c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_strings_cannot_drive_the_terminal() {
        for (raw, want) in [
            ("eth0", "eth0"),
            ("b\u{e4}r 1", "b\u{e4}r 1"),
            ("\x1b[2J", "\\u{1b}[2J"),
            ("a\nstate      bound", "a\\u{a}state      bound"),
            ("\r\t\x7f", "\\u{d}\\u{9}\\u{7f}"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("\u{202e}x", "\\u{202e}x"),
            ("\u{2028}", "\\u{2028}"),
            ("back\\slash \"q\"", "back\\u{5c}slash \"q\""),
        ] {
            assert_eq!(printable(raw), want, "{raw:?}");
        }
        let v = serde_json::json!({"s": "\u{1b}]0;x\u{7}\u{9b}\u{202e}\u{1F600}"});
        let text = json_printable(&serde_json::to_string_pretty(&v).unwrap());
        assert!(
            text.chars()
                .all(|c| c == '\n' || (' '..='~').contains(&c) || c == '\u{1F600}'),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn every_control_and_format_character_is_escaped() {
        // All of C0, DEL, C1, and the bidi and invisible format characters.
        let nasty = (0u32..0x20)
            .chain(0x7f..0xa0)
            .chain([0xad, 0x200b, 0x200e, 0x200f, 0x2066, 0x2069, 0xfeff])
            .chain(0x202a..=0x202e)
            .filter_map(char::from_u32);
        for c in nasty {
            let s = c.to_string();
            let p = printable(&s);
            assert!(p.starts_with("\\u{") && p.is_ascii(), "{c:?} -> {p}");
            let j = json_printable(&serde_json::to_string(&s).unwrap());
            assert!(j.is_ascii(), "{c:?} -> {j}");
            assert_eq!(serde_json::from_str::<String>(&j).unwrap(), s);
        }
        // Beyond the BMP: a surrogate pair, which JSON readers put back together.
        let tag = "\u{E0041}";
        let j = json_printable(&serde_json::to_string(tag).unwrap());
        assert_eq!(j, "\"\\udb40\\udc41\"");
        assert_eq!(serde_json::from_str::<String>(&j).unwrap(), tag);
    }
}
